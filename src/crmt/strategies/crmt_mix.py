"""CRMT-Mix: CRMT whose step 1 runs on mixup samples (method.md §3 Variants, baselines.md §9.6)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from crmt.losses import mixup_margin_regularizer
from crmt.robustness.lipschitz import GradientMethod
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
        num_classes: int,
        input_shapes: dict[str, list[int]] | None = None,
        encoder_width: int = 64,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        rho: float = 2.0,
        step1_epochs: int = 1,
        step2_epochs: int = 1,
        step2_optimizer: OptimizerCallable = torch.optim.Adam,
        init_integration: float = 1.0,
        tau_method: GradientMethod = "loop",
        mixup_alpha: float = 1.0,
        seed: int = 0,
    ) -> None:
        if mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be > 0, got {mixup_alpha}")
        if num_classes < 3:
            raise ValueError(
                f"CRMT-Mix's margin needs num_classes >= 3 (two mixed labels and another), got {num_classes}"
            )
        super().__init__(
            num_classes,
            input_shapes,
            encoder_width,
            optimizer,
            lr_scheduler,
            rho=rho,
            step1_epochs=step1_epochs,
            step2_epochs=step2_epochs,
            step2_optimizer=step2_optimizer,
            init_integration=init_integration,
            tau_method=tau_method,
        )

    def step1_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lam CE(y_a) + (1 - lam) CE(y_b) + rho * L1-mix on one mixup batch; returns the loss and its parts."""
        mixed = mixed_batch(self, batch, self.hparams.mixup_alpha, self.hparams.seed)
        output = self(mixed.inputs)
        ce = mixed.cross_entropy(output.logits)
        margin = mixup_margin_regularizer(output.scores, mixed.labels_a, mixed.labels_b, mixed.lam)
        return ce + self.hparams.rho * margin, {"ce": ce, "margin": margin, "lam": torch.tensor(mixed.lam)}
