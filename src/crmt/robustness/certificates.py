"""Pair Lipschitz tables of a trained model (see :mod:`crmt.robustness.certify`): estimated or sound.

- :class:`LipschitzEstimator`: the paper's empirical estimate, the largest input-gradient
  norm over a data set (method.md §4), accumulated batch by batch and reducible across
  ranks. Orthogonal head: tau~_k^(m) per class; JT head: the norm of the gradient of each
  class-pair margin (eta_j^(m) of method.md §1).
- :func:`sound_pair_lipschitz`: an upper bound built from each encoder's Lipschitz upper
  bound (:mod:`crmt.robustness.sound`) and the exact norms of the head's row differences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from crmt.robustness.certify import linear_pair_lipschitz, orthogonal_pair_lipschitz
from crmt.robustness.lipschitz import score_gradient_gram, score_gradient_norms
from crmt.robustness.modes import eval_mode, input_gradients


def score_function(model, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x^(m) (B, ...) -> s^(m) = W^(m) phi^(m)(x^(m)) (B, K), with the head's weights detached."""
    weight = model.head.modality_weights()[m].detach()

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return model.encode_modality(m, inputs) @ weight.T

    return score


def require_certifiable(model) -> None:
    """Raise a clear error for a model whose logits are not linear in each modality's features."""
    if not getattr(model, "certifiable", False):
        raise ValueError(
            f"{type(model).__name__} is not certifiable: its logits are not a sum of per-modality linear "
            "scores, so the bounds of method.md §1-§2 do not apply"
        )


class LipschitzEstimator:
    """Running max of input-gradient norms over batches, turned into a pair Lipschitz table.

    ``raw`` is (M, K) tau per class for heads with ``per_class_certificate`` (orthogonal head)
    and (M, K, K) per class pair otherwise (JT head). Only input gradients are computed, in
    evaluation mode.
    """

    def __init__(self, model) -> None:
        require_certifiable(model)
        self.model = model
        self.per_class = bool(getattr(model.head, "per_class_certificate", False))
        num_modalities, num_classes = len(model.modalities), model.num_classes
        shape = (num_modalities, num_classes) if self.per_class else (num_modalities, num_classes, num_classes)
        with torch.inference_mode(False):  # updated in place later, also from Lightning's eval loops
            self.raw = torch.zeros(shape, device=model.device)
        self.samples = 0

    def update(self, inputs: Sequence[torch.Tensor]) -> None:
        """Fold in one batch: ``inputs`` in the model's modality order."""
        model = self.model
        with eval_mode(model), input_gradients():
            integration = model.head.integration_weights().detach()
            for m, x in enumerate(inputs):
                score_fn = score_function(model, m)
                if self.per_class:
                    _, norms = score_gradient_norms(score_fn, x.clone())
                    self.raw[m] = torch.maximum(self.raw[m], norms.max(dim=0).values)
                else:
                    _, gram = score_gradient_gram(score_fn, x.clone())
                    pairs = linear_pair_lipschitz(integration[m : m + 1], gram[:, None])[:, 0]
                    self.raw[m] = torch.maximum(self.raw[m], pairs.max(dim=0).values)
        self.samples += int(inputs[0].shape[0])

    def pair_lipschitz(self, reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The (M, K, K) table; ``reduce_max`` max-reduces the raw estimate across ranks first."""
        raw = reduce_max(self.raw) if reduce_max is not None else self.raw
        if self.per_class:
            return orthogonal_pair_lipschitz(self.model.head.integration_weights().detach(), raw)
        return raw


@torch.no_grad()
def sound_pair_lipschitz(model) -> torch.Tensor:
    """Upper bounds L[m, y, j] = Lip(phi^(m)) * ||A_y^(m) W_y^(m) - A_j^(m) W_j^(m)||_2: (M, K, K).

    Radii computed from it can never be beaten by any perturbation of that size.
    """
    require_certifiable(model)
    integration = model.head.integration_weights().detach()
    tables = []
    for m, weight in enumerate(model.head.modality_weights()):
        rows = integration[m][:, None] * weight.detach()
        tables.append(torch.cdist(rows[None].double(), rows[None].double())[0] * model.encoder_lipschitz_bound(m))
    return torch.stack(tables).to(integration.dtype)
