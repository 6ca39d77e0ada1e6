"""Certified l2 radii of multi-modal models that are linear in each modality's features.

Both heads of the project write the logits as ``h = sum_m A^(m) * s^(m) + b`` with
``s^(m) = W^(m) phi^(m)(x^(m))``. Everything here is expressed through the *pair
Lipschitz table* ``L`` of shape (M, K, K): ``L[m, y, j]`` bounds the Lipschitz constant,
with respect to x^(m), of modality m's contribution to the margin ``h_y - h_j``.

- JT head (method.md §1): ``L[m, y, j] = eta_j^(m) = c_j^(m) tau_j^(m)``, the Lipschitz
  constant of ``(W_y^(m) - W_j^(m)) phi^(m)`` (Theorem 3.3).
- Orthogonal head (method.md §2): ``L[m, y, j] = |a_y^(m)| tau~_y^(m) + |a_j^(m)| tau~_j^(m)``
  (Theorem 3.5; |a| is the Lipschitz constant of a * s for a weight of either sign).

For a perturbation (delta^(1), ..., delta^(M)) the margin moves by at most
``sum_m L[m, y, j] ||delta^(m)|| <= sqrt(sum_m L[m, y, j]^2) ||delta||``, which gives the
multi-modal radius ``min_j (h_y - h_j) / sqrt(sum_m L^2)`` and the uni-modal radius of
modality m ``min_j (h_y - h_j) / L[m, y, j]`` (Proposition 3.4). Radii are 0 for a
misclassified sample. With estimated Lipschitz constants (max gradient norms) they are
*estimated* certified radii; with upper bounds (:func:`~crmt.robustness.certificates.sound_pair_lipschitz`) they hold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DENOMINATOR_FLOOR = 1e-12
"""Smallest denominator used in a radius; a zero Lipschitz bound gives a huge but finite radius."""

ROUNDING_MARGIN = 1e-4
"""Relative rounding margin of sound radii (:func:`rounding_safe_logits`): every margin h_y - h_j is lowered by
``1e-4 * (1 + max_k |h_k|)`` before it is divided by a sound bound. The float32 logits of the project's models
differ from their float64 values by about 1e-6 of that scale (measured in tests/test_lipschitz_encoders.py),
so the margin covers the forward pass's rounding a hundred times over; the radius arithmetic itself (one
subtraction, one division) loses less than 1e-6 relative, and sound tables are rounded up to float32."""


def label_mask(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) labels -> (B, K) bool, True at each sample's label."""
    return F.one_hot(labels, num_classes).bool()


def runner_up_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Largest-logit class other than the label: (B, K), (B,) -> (B,)."""
    return logits.masked_fill(label_mask(labels, logits.shape[1]), float("-inf")).argmax(dim=1)


def pair_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """h_y(x) - h_j(x) for every class j: (B, K) (0 at j = y)."""
    return logits.gather(1, labels[:, None]) - logits


def orthogonal_pair_lipschitz(integration: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """L[m, y, j] = |a_y^(m)| tau_y^(m) + |a_j^(m)| tau_j^(m): (M, K) weights and constants -> (M, K, K)."""
    per_class = integration.abs() * tau
    return per_class[:, :, None] + per_class[:, None, :]


def linear_pair_lipschitz(integration: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """||A_y g_y - A_j g_j|| for every class pair, from the Gram matrix of the score gradients.

    integration: (M, K) the weights A; gram: (..., M, K, K) with gram[m, k, l] = <g_k^(m), g_l^(m)>
    where g_k^(m) is the input gradient of s_k^(m). Returns (..., M, K, K).
    """
    weighted = integration[:, :, None] * integration[:, None, :] * gram
    diagonal = torch.diagonal(weighted, dim1=-2, dim2=-1)
    squared = diagonal[..., :, None] + diagonal[..., None, :] - 2 * weighted
    return squared.clamp_min(0.0).sqrt()


def rounding_safe_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Float32 ``logits`` (B, K) with each label's logit lowered by ``ROUNDING_MARGIN * (1 + max_k |h_k|)``: every
    margin h_y - h_j of a sound radius then holds for the exact (real-number) logits. A sample whose margin is
    within the rounding margin counts as misclassified (radius 0)."""
    scale = 1.0 + logits.abs().amax(dim=1)
    return logits - ROUNDING_MARGIN * scale[:, None] * label_mask(labels, logits.shape[1])


def round_up_float32(table: torch.Tensor) -> torch.Tensor:
    """A float64 table as float32 values no smaller than it (one ulp up where the cast rounded down)."""
    rounded = table.float()
    return torch.where(rounded.double() < table, torch.nextafter(rounded, torch.full_like(rounded, float("inf"))), rounded)


def _pair_lipschitz_of_labels(pair_lipschitz: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rows of the table at each label: (M, K, K), (B,) -> (M, B, K)."""
    return pair_lipschitz[:, labels, :]


def certified_bounds(logits: torch.Tensor, labels: torch.Tensor, pair_lipschitz: torch.Tensor) -> torch.Tensor:
    """r_j(x) = (h_y - h_j) / sqrt(sum_m L[m, y, j]^2) for every class j: (B, K); +inf at j = y."""
    denominator = _pair_lipschitz_of_labels(pair_lipschitz, labels).pow(2).sum(0).sqrt()
    bounds = pair_margins(logits, labels) / denominator.clamp_min(DENOMINATOR_FLOOR)
    return bounds.masked_fill(label_mask(labels, logits.shape[1]), float("inf"))


def unimodal_bounds(
    logits: torch.Tensor, labels: torch.Tensor, pair_lipschitz: torch.Tensor, modality: int
) -> torch.Tensor:
    """r_j^(m)(x) = (h_y - h_j) / L[m, y, j] for every class j (attack on modality m only): (B, K)."""
    denominator = _pair_lipschitz_of_labels(pair_lipschitz, labels)[modality]
    bounds = pair_margins(logits, labels) / denominator.clamp_min(DENOMINATOR_FLOOR)
    return bounds.masked_fill(label_mask(labels, logits.shape[1]), float("inf"))


def _radius(bounds: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    correct = logits.argmax(dim=1) == labels
    return torch.where(correct, bounds.min(dim=1).values.clamp_min(0.0), torch.zeros_like(bounds[:, 0]))


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, pair_lipschitz: torch.Tensor) -> torch.Tensor:
    """Multi-modal certified l2 radius min_{j != y} r_j(x), 0 for misclassified samples: (B,)."""
    return _radius(certified_bounds(logits, labels, pair_lipschitz), logits, labels)


def unimodal_radius(
    logits: torch.Tensor, labels: torch.Tensor, pair_lipschitz: torch.Tensor, modality: int
) -> torch.Tensor:
    """Certified l2 radius against attacks on modality ``modality`` only, 0 for misclassified samples: (B,)."""
    return _radius(unimodal_bounds(logits, labels, pair_lipschitz, modality), logits, labels)


def certified_accuracy(radius: torch.Tensor, correct: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Fraction of samples that are correct with radius >= r, for each r in ``thresholds``: (R,)."""
    if radius.numel() == 0:
        return torch.zeros_like(thresholds, dtype=torch.float32)
    certified = correct[None, :] & (radius[None, :] >= thresholds[:, None])
    return certified.float().mean(dim=1)


def runner_up_bound(
    scores: torch.Tensor, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """r_j(x) of the orthogonal head for j the runner-up class of the fused logits: (B,).

    scores: (M, B, K) uni-modal scores s^(m); integration a and tau: (M, K); bias: (K,).
    Differentiable in ``integration``: the step-2 objective of CRMT maximises its mean.
    """
    logits = (integration[:, None, :] * scores).sum(0) + bias
    runner_up = runner_up_class(logits, labels)
    bounds = certified_bounds(logits, labels, orthogonal_pair_lipschitz(integration, tau))
    return bounds.gather(1, runner_up[:, None]).squeeze(1)
