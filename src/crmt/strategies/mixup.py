"""Mixup: joint training on multi-modal mixup samples (baselines.md §7)."""

from __future__ import annotations

import torch

from crmt.mixing import MixedBatch, mix_inputs
from crmt.seeding import step_generator
from crmt.strategies.base import Batch, MultiModalModule
from crmt.strategies.jt import JointTraining


def mixed_batch(model: MultiModalModule, batch: Batch, alpha: float, seed: int) -> MixedBatch:
    """The batch mixed with one lam ~ Beta(alpha, alpha) and one permutation, drawn from (seed, global step)."""
    return mix_inputs(model.inputs(batch), batch["label"], alpha, step_generator(seed, model.global_step))


class MixupTraining(JointTraining):
    """Minimise lam * CE(h(x~), y_a) + (1 - lam) * CE(h(x~), y_b) with x~ mixed as in :func:`crmt.mixing.mix_inputs`.

    Args (besides :class:`MultiModalModule`'s):
        mixup_alpha: alpha of Beta(alpha, alpha) (1.0, i.e. uniform lam, in the CRMT code).
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

    def training_step(self, batch: Batch, batch_idx: int):
        mixed = mixed_batch(self, batch, self.hparams.mixup_alpha, self.hparams.seed)
        loss = mixed.cross_entropy(self(mixed.inputs).logits)
        self.log_train({"loss": loss, "lam": torch.tensor(mixed.lam)}, batch)
        return loss
