"""Adversarial training examples: the project's multi-modal l2-PGD applied to a training batch.

Used by MMAT and CRMT-AT (baselines.md §6, §9.5). The official generator takes 5 joint
l2-normalised steps of eps / 5 with eps = 0.1, in train mode and without projection or pixel
clamping; here the same budget and steps run through :class:`~crmt.robustness.pgd.L2PGD`
(evaluation mode, so batch-norm statistics do not drift during the attack; projection onto the
joint ball; frames clamped to valid pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

from crmt.models.protocol import Batch
from crmt.robustness.ball import Ball
from crmt.robustness.pgd import L2PGD
from crmt.strategies.base import MultiModalModule


def check_adversary_settings(eps: float, steps: int, step_fraction: float) -> None:
    """Fail fast, naming the setting, on an invalid adversarial-training configuration."""
    if eps <= 0:
        raise ValueError(f"at_eps must be > 0, got {eps}")
    if steps < 1:
        raise ValueError(f"at_steps must be >= 1, got {steps}")
    if step_fraction <= 0:
        raise ValueError(f"at_step_fraction must be > 0, got {step_fraction}")


def adversarial_batch(
    module: MultiModalModule, batch: Batch, eps: float, steps: int, step_fraction: float, random_start: bool = False
) -> Batch:
    """``batch`` with every modality replaced by its multi-modal l2-PGD example (joint budget ``eps``).

    Pixel modalities are clamped to the module's own pixel ranges (its ``pixel_normalization``, linked
    from the data module by the CLI). Labels and indices are unchanged.
    """
    inputs = module.inputs(batch)
    ball = Ball.around(inputs, eps, pixel_ranges=module.pixel_ranges)
    adversarial: Sequence = L2PGD(steps, step_fraction, random_start)(module, inputs, batch["label"], ball).adversarial
    return {**batch, **dict(zip(module.modalities, adversarial, strict=True))}
