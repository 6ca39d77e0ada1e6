"""Fusion heads: concatenation + linear (JT) and the orthogonal framework of CRMT (method.md §2).

Both take one feature tensor per modality (in the model's modality order) and return a
:class:`FusionOutput` with the fused logits and the per-modality scores. Both are linear in
each modality's features, ``logits = sum_m A^(m) * (W^(m) phi^(m)) + b``, and expose the
parts of that form (:meth:`modality_weights` W^(m), :meth:`integration_weights` A, ``bias``
b), which is what certification needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class FusionOutput:
    """logits: (B, K) fused logits. scores: (M, B, K) per-modality contributions.

    For :class:`ConcatFusion` ``scores[m] = W^(m) phi^(m)`` (no bias); for
    :class:`OrthogonalFusion` ``scores[m] = W~^(m) phi^(m)``, the uni-modal score s^(m).
    """

    logits: torch.Tensor
    scores: torch.Tensor


class ConcatFusion(nn.Module):
    """h(x) = W [phi^(1); ...; phi^(M)] + b, i.e. sum_m W^(m) phi^(m) + b.

    Its certificate is per class pair (method.md §1, Theorem 3.3).
    """

    per_class_certificate: ClassVar[bool] = False

    def __init__(self, feature_dims: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.feature_dims = list(feature_dims)
        self.linear = nn.Linear(sum(self.feature_dims), num_classes)

    @property
    def bias(self) -> torch.Tensor:
        """b: (K,)."""
        return self.linear.bias

    def modality_weights(self) -> list[torch.Tensor]:
        """W^(m) for each modality, each (K, D_m)."""
        return list(torch.split(self.linear.weight, self.feature_dims, dim=1))

    def integration_weights(self) -> torch.Tensor:
        """A = 1: (M, K); the concatenation head weighs every modality's score by one."""
        return self.linear.weight.new_ones(len(self.feature_dims), self.linear.out_features)

    def forward(self, features: Sequence[torch.Tensor]) -> FusionOutput:
        scores = torch.stack([f @ w.T for f, w in zip(features, self.modality_weights(), strict=True)])
        return FusionOutput(logits=scores.sum(0) + self.linear.bias, scores=scores)


def orthonormal_rows(raw: torch.Tensor) -> torch.Tensor:
    """Map a raw (K, D) matrix with K <= D to the (K, D) matrix with orthonormal rows spanning its row space.

    Uses a reduced QR of raw^T with the sign of R's diagonal fixed, so the map is smooth
    and W W^T = I_K holds to float precision for every value of ``raw``.
    """
    q, r = torch.linalg.qr(raw.T)
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs).T


def integrate_scores(integration: torch.Tensor, scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h~_k = sum_m a_k^(m) s_k^(m) + b~_k: logits (B, K) from integration weights (M, K), uni-modal
    scores (M, B, K) and bias (K,) (method.md §2)."""
    return (integration[:, None, :] * scores).sum(0) + bias


class OrthogonalFusion(nn.Module):
    """h~_k(x) = sum_m a_k^(m) s_k^(m)(x) + b~_k with s^(m) = W~^(m) phi^(m) and W~^(m) W~^(m)T = I_K.

    The orthonormal rows are recomputed from an unconstrained parameter in every forward
    pass, so the constraint holds after any optimiser step, not only at initialisation.
    Its certificate uses one Lipschitz constant per class (method.md §2, Theorem 3.5).
    """

    per_class_certificate: ClassVar[bool] = True

    def __init__(self, feature_dims: Sequence[int], num_classes: int, init_integration: float = 0.1) -> None:
        super().__init__()
        for m, dim in enumerate(feature_dims):
            if dim < num_classes:
                raise ValueError(
                    f"OrthogonalFusion needs feature dim >= num_classes for orthonormal rows; "
                    f"modality {m} has feature dim {dim} < num_classes {num_classes} (raise the encoder width)"
                )
        self.raw_weights = nn.ParameterList(
            [nn.Parameter(torch.randn(num_classes, dim) / dim**0.5) for dim in feature_dims]
        )
        self.integration = nn.Parameter(torch.full((len(feature_dims), num_classes), float(init_integration)))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.feature_dims = list(feature_dims)

    def modality_weights(self) -> list[torch.Tensor]:
        """W~^(m) for each modality, each (K, D_m) with orthonormal rows."""
        return [orthonormal_rows(raw) for raw in self.raw_weights]

    def integration_weights(self) -> torch.Tensor:
        """A = a: (M, K)."""
        return self.integration

    def uni_modal_scores(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """s^(m) = W~^(m) phi^(m): (M, B, K)."""
        return torch.stack([f @ w.T for f, w in zip(features, self.modality_weights(), strict=True)])

    def fuse(self, scores: torch.Tensor) -> torch.Tensor:
        """Fused logits (B, K) from uni-modal scores (M, B, K)."""
        return integrate_scores(self.integration, scores, self.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> FusionOutput:
        scores = self.uni_modal_scores(features)
        return FusionOutput(logits=self.fuse(scores), scores=scores)
