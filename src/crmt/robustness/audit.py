"""The honest check of a certificate: attack each sample with a budget just under its radius.

An estimated certified radius (from empirical Lipschitz estimates, method.md §4) is not a
guarantee. :func:`audit_radii` runs multi-modal l2-PGD with a per-sample budget of
``fraction * radius`` and reports which samples it misclassifies: each one is a *violation*,
a radius that an attack beat. For sound radii (upper-bound Lipschitz constants) the count must
be zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crmt.models.protocol import MultiModalModel
from crmt.robustness.attacks import L2PGD, PixelRanges, predict, rescaled


def audit_radii(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    radius: torch.Tensor,
    pixel_ranges: PixelRanges | None = None,
    *,
    steps: int = 10,
    fraction: float = 0.99,
    start: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eligible, violated), both (B,) bool.

    eligible: the sample has a positive radius (so it is correctly classified); violated: an
    eligible sample that l2-PGD (``steps`` steps of 2.5 * budget / steps, the usual choice)
    misclassifies within ``fraction * radius``. Only eligible samples are attacked. With
    ``start`` (one (B, ...) tensor per modality, e.g. the examples of an attack at another
    budget) the attack continues from its perturbation rescaled to each sample's budget; without
    it PGD starts at the clean inputs.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"audit fraction must be in (0, 1], got {fraction}")
    eligible = radius > 0
    violated = torch.zeros_like(eligible)
    if not bool(eligible.any()):
        return eligible, violated
    subset = [x[eligible] for x in inputs]
    budget = fraction * radius[eligible]
    attack = L2PGD(eps=1.0, steps=steps, step_fraction=min(1.0, 2.5 / steps))
    adversarial = attack(
        model, subset, labels[eligible], pixel_ranges, eps=budget,
        start=None if start is None else rescaled(subset, [x[eligible] for x in start], budget),
    )
    violated[eligible] = predict(model, adversarial) != labels[eligible]
    return eligible, violated
