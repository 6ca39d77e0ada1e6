"""CRMT-Mix: CRMT whose step 1 runs on mixup samples (method.md §3 Variants, baselines.md §9.6)."""

from __future__ import annotations

import torch

from crmt.losses import mixup_margin_regularizer
from crmt.strategies.base import Batch
from crmt.strategies.crmt import CRMTJointTraining
from crmt.strategies.mixup import mixed_batch


class CRMTMixup(CRMTJointTraining):
    """Step 1 minimises lam CE(h~(x~), y_a) + (1 - lam) CE(h~(x~), y_b) + rho * L1-mix on mixup samples x~,
    with L1-mix of :func:`crmt.losses.mixup_margin_regularizer` (the paper's intended margin, not the
    official code's, which subtracts raw scores instead of their exponentials). tau~ and step 2 use
    clean data, as in :class:`CRMTJointTraining`.

    Args (besides :class:`CRMTJointTraining`'s):
        mixup_alpha: alpha of Beta(alpha, alpha) (1.0 in the CRMT code).
        seed: seeds lam and the permutation together with the global step (same on every rank).
    """

    def __init__(
        self,
        *,
        mixup_alpha: float = 1.0,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be > 0, got {mixup_alpha}")
        super().__init__(**kwargs)
        if self.num_classes < 3:
            raise ValueError(
                f"CRMT-Mix's margin needs num_classes >= 3 (two mixed labels and another), got {self.num_classes}"
            )

    def step1_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lam CE(y_a) + (1 - lam) CE(y_b) + rho * L1-mix on one mixup batch; returns the loss and its parts."""
        mixed = mixed_batch(self, batch, self.hparams.mixup_alpha, self.hparams.seed)
        output = self(mixed.inputs)
        ce = mixed.cross_entropy(output.logits)
        margin = mixup_margin_regularizer(output.scores, mixed.labels_a, mixed.labels_b, mixed.lam)
        return ce + self.hparams.rho * margin, {"ce": ce, "margin": margin, "lam": torch.tensor(mixed.lam)}
