"""Certified bounds of the orthogonal framework (method.md §2, Theorem 3.5).

Notation: scores s (M, B, K), integration weights a (M, K), bias b (K,), per-class
Lipschitz constants tau (M, K) of s_k^(m) with respect to x^(m). The bounds use |a|, the
Lipschitz constant of a * s for a weight of either sign (the paper assumes a >= 0).
"""

from __future__ import annotations

import torch

DENOMINATOR_FLOOR = 1e-12


def runner_up_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Largest-logit class other than the label: (B, K), (B,) -> (B,)."""
    masked = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return masked.argmax(dim=1)


def _pairwise_terms(
    scores: torch.Tensor, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerators (B, K) and per-modality denominators (M, B, K) of r_j for every class j."""
    weighted = integration[:, None, :] * scores
    index = labels.view(1, -1, 1).expand(scores.shape[0], -1, 1)
    numerator = (weighted.gather(2, index) - weighted).sum(0) + bias[labels][:, None] - bias[None, :]
    lipschitz = integration.abs() * tau
    per_modality = lipschitz.gather(1, labels.view(1, -1).expand(scores.shape[0], -1)).unsqueeze(2) + lipschitz[:, None, :]
    return numerator, per_modality


def certified_bounds(
    scores: torch.Tensor, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """r_j(x) for every class j: (B, K); the entry j = y is +inf.

    r_j = [sum_m (a_y s_y - a_j s_j) + b_y - b_j] / sqrt(sum_m (|a_y| tau_y + |a_j| tau_j)^2).
    """
    numerator, per_modality = _pairwise_terms(scores, integration, bias, tau, labels)
    denominator = per_modality.pow(2).sum(0).sqrt().clamp_min(DENOMINATOR_FLOOR)
    bounds = numerator / denominator
    return bounds.masked_fill(torch.nn.functional.one_hot(labels, scores.shape[2]).bool(), float("inf"))


def certified_radius(
    scores: torch.Tensor, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Multi-modal certified l2 radius min_{j != y} r_j(x), 0 for misclassified samples: (B,)."""
    return certified_bounds(scores, integration, bias, tau, labels).min(dim=1).values.clamp_min(0.0)


def runner_up_bound(
    scores: torch.Tensor, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """r_j(x) for j the runner-up class of the fused logits: (B,). The step-2 objective maximises its mean."""
    logits = (integration[:, None, :] * scores).sum(0) + bias
    runner_up = runner_up_class(logits, labels)
    return certified_bounds(scores, integration, bias, tau, labels).gather(1, runner_up[:, None]).squeeze(1)
