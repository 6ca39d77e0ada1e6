"""Pair Lipschitz tables of a trained model (see :mod:`crmt.robustness.certify`): estimated or sound.

- :class:`LipschitzEstimator`: the paper's empirical estimate, the largest input-gradient
  norm over a data set (method.md §4), accumulated batch by batch and reducible across
  ranks; the one estimator of the project: CRMT's phase switch estimates tau~ over the training
  set with it (:meth:`LipschitzEstimator.scores`), and the robustness evaluation over the
  evaluated samples (:meth:`LipschitzEstimator.clean_pass`). Orthogonal head: tau~_k^(m) per
  class; JT head: the norm of the gradient of each class-pair margin (eta_j^(m) of method.md §1).
- :func:`sound_pair_lipschitz`: an upper bound built from each encoder's Lipschitz upper
  bound (``lipschitz_upper_bound`` of :mod:`crmt.models.encoders`) and the exact norms of the
  head's row differences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from crmt.models.protocol import CertifiableModel, is_certifiable
from crmt.robustness.attack import CleanPass
from crmt.robustness.attack_losses import ascent_direction
from crmt.robustness.certify import linear_pair_lipschitz, orthogonal_pair_lipschitz, round_up_float32
from crmt.robustness.lipschitz import GradientMethod, score_gradient_norms, score_input_gradients
from crmt.robustness.modes import eval_mode, float32_math, input_gradients


def score_function(model: CertifiableModel, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x^(m) (B, ...) -> s^(m) = W^(m) phi^(m)(x^(m)) (B, K), with the head's weights detached."""
    weight = model.head.modality_weights()[m].detach()

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return model.encode_modality(m, inputs) @ weight.T

    return score


def require_certifiable(model: object) -> None:
    """Raise a clear error for a model whose logits are not linear in each modality's features."""
    if not is_certifiable(model):
        raise ValueError(
            f"{type(model).__name__} is not certifiable: its logits are not a sum of per-modality linear "
            "scores, so the bounds of method.md §1-§2 do not apply"
        )


class LipschitzEstimator:
    """Running max of input-gradient norms over batches, turned into a pair Lipschitz table.

    ``raw`` is (M, K) tau per class for heads with ``per_class_certificate`` (orthogonal head)
    and (M, K, K) per class pair otherwise (JT head). Only input gradients are computed, in
    evaluation mode. ``method`` chooses how :meth:`scores` takes the K per-class gradients
    (see :func:`~crmt.robustness.lipschitz.score_gradient_norms`).
    """

    def __init__(self, model: CertifiableModel, method: GradientMethod = "loop") -> None:
        require_certifiable(model)
        self.model = model
        self.method = method
        self.per_class = bool(model.head.per_class_certificate)
        num_modalities, num_classes = len(model.modalities), model.num_classes
        shape = (num_modalities, num_classes) if self.per_class else (num_modalities, num_classes, num_classes)
        with torch.inference_mode(False):  # updated in place later, also from Lightning's eval loops
            self.raw = torch.zeros(shape, device=model.device)
        self.samples = 0
        self._score_functions: list[Callable[[torch.Tensor], torch.Tensor]] | None = None

    def scores(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fold in one batch (``inputs`` in the model's modality order) and return its uni-modal
        scores s^(m) (M, B, K), for a per-class head (CRMT's tau~ over the training set, method.md §3):
        only the gradient norms are taken, never the K gradients at once. The head's W~^(m) is read at
        the first call: one estimator serves one pass over a data set at fixed weights.
        """
        self._require_per_class()
        if self._score_functions is None:
            self._score_functions = [score_function(self.model, m) for m in range(len(inputs))]
        scores = []
        with eval_mode(self.model), float32_math():
            for m, (score_fn, x) in enumerate(zip(self._score_functions, inputs, strict=True)):
                modality_scores, norms = score_gradient_norms(score_fn, x, self.method)
                self.raw[m] = torch.maximum(self.raw[m], norms.max(dim=0).values)
                scores.append(modality_scores)
        self.samples += int(inputs[0].shape[0])
        return torch.stack(scores)

    def update(self, inputs: Sequence[torch.Tensor]) -> None:
        """Fold in one batch: ``inputs`` in the model's modality order."""
        with eval_mode(self.model), input_gradients(), float32_math():
            for m, tensor in enumerate(inputs):
                x = tensor.detach().clone().requires_grad_(True)
                self._fold(m, self.model.encode_modality(m, x), x)
        self.samples += int(inputs[0].shape[0])

    def clean_pass(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> CleanPass:
        """Fold in one batch and return its :func:`~crmt.robustness.attack.clean_pass` from the same
        backward passes, without one of its own.

        With logits ``sum_m A^(m) * s^(m) + b``, the loss ascent direction d (B, K) gives the
        gradient w.r.t. x^(m) as ``sum_k d_k A_k^(m) g_k^(m)``, g the score gradients folded in
        (see :meth:`_fold` for the pair head's differences).
        """
        model = self.model
        with eval_mode(model), input_gradients(), float32_math():
            x = [t.detach().clone().requires_grad_(True) for t in inputs]
            features = [model.encode_modality(m, xm) for m, xm in enumerate(x)]
            with torch.no_grad():
                logits = model.fuse(features).logits
            direction = ascent_direction(logits, labels)
            gradients = []
            for m in range(len(x)):
                weighted, weights = self._fold(m, features[m], x[m])
                gradients.append(torch.einsum("bk,bk...->b...", direction * weights, weighted))
        self.samples += int(labels.shape[0])
        return CleanPass(logits, gradients, [f.detach() for f in features])

    def _fold(self, m: int, features: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold modality m into the running max; returns gradients G (B, K, ...) and weights w (K,)
        with ``sum_k c_k A_k g_k = sum_k c_k w_k G_k`` for every c that sums to 0 (as the ascent
        direction does).

        Orthogonal head: G_k = g_k, the score gradients, and w = A. Pair head: only differences
        of A_k g_k enter its table, so G_k = A_k g_k - A_0 g_0 (G_0 = 0: K - 1 backward passes)
        and w = 1.
        """
        integration = self.model.head.integration_weights().detach()[m]
        weight = self.model.head.modality_weights()[m].detach()
        if self.per_class:
            gradients = score_input_gradients(features, inputs, weight)
            self.raw[m] = torch.maximum(self.raw[m], gradients.flatten(2).norm(dim=2).max(dim=0).values)
            return gradients, integration
        rows = integration[:, None] * weight
        differences = score_input_gradients(features, inputs, rows[1:] - rows[:1])
        gradients = torch.cat([torch.zeros_like(differences[:, :1]), differences], dim=1)
        flat = gradients.flatten(2)
        pairs = linear_pair_lipschitz(torch.ones_like(integration)[None], (flat @ flat.transpose(1, 2))[:, None])[:, 0]
        self.raw[m] = torch.maximum(self.raw[m], pairs.max(dim=0).values)
        return gradients, torch.ones_like(integration)

    def class_lipschitz(self, reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """tau~ (M, K) of a per-class head: ``raw``, max-reduced across ranks by ``reduce_max`` if given."""
        self._require_per_class()
        return reduce_max(self.raw) if reduce_max is not None else self.raw

    def _require_per_class(self) -> None:
        if not self.per_class:
            head = type(self.model.head).__name__
            raise ValueError(f"{head} has no per-class Lipschitz constants (its table is per class pair)")

    def pair_lipschitz(self, reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The (M, K, K) table; ``reduce_max`` max-reduces the raw estimate across ranks first."""
        if self.per_class:
            integration = self.model.head.integration_weights().detach()
            return orthogonal_pair_lipschitz(integration, self.class_lipschitz(reduce_max))
        return reduce_max(self.raw) if reduce_max is not None else self.raw


@torch.no_grad()
def sound_pair_lipschitz(model: CertifiableModel) -> torch.Tensor:
    """Upper bounds L[m, y, j] = Lip(phi^(m)) * ||A_y^(m) W_y^(m) - A_j^(m) W_j^(m)||_2: (M, K, K), float32
    rounded up from float64.

    Radii computed from it (with :func:`~crmt.robustness.certify.rounding_safe_logits`) can never be beaten by
    any perturbation of that size. For the orthogonal head the row norm is ``sqrt(a_y^2 + a_j^2) <= |a_y| + |a_j|``
    (orthonormal rows): at most Theorem 3.5's pair constant with tau = Lip(phi^(m)).
    """
    require_certifiable(model)
    integration = model.head.integration_weights().detach()
    tables = []
    for m, weight in enumerate(model.head.modality_weights()):
        rows = integration[m][:, None] * weight.detach()
        tables.append(torch.cdist(rows[None].double(), rows[None].double())[0] * model.encoder_lipschitz_bound(m))
    return round_up_float32(torch.stack(tables)).to(integration.device)
