"""The honest check of a certificate: attack each sample with a budget just under its radius.

An estimated certified radius (from empirical Lipschitz estimates, method.md §4) is not a
guarantee. :func:`audit_radii` runs multi-modal l2-PGD with a per-sample budget of
``fraction * radius`` and reports which samples it misclassifies: each one is a *violation*,
a radius that an attack beat. With ``suite`` (attacks of the adaptive evaluation,
:mod:`~crmt.robustness.suite`; the report passes its gradient attacks) the samples PGD left standing
are attacked again within the same budgets, so the violation rate is that of the strongest attack tried. For sound radii
(upper-bound Lipschitz constants) the count must be zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from crmt.models.protocol import MultiModalModel
from crmt.robustness.attack import Attack, predict
from crmt.robustness.ball import Ball, PixelRanges, rescaled
from crmt.robustness.pgd import L2PGD
from crmt.robustness.suite import run_suite


class AuditOutcome(NamedTuple):
    """(B,) bool each: ``eligible`` (positive radius, so correctly classified), ``violated`` (an eligible
    sample l2-PGD misclassified within the budget) and ``violated_adaptive`` (by PGD or the suite;
    ``None`` without a suite)."""

    eligible: torch.Tensor
    violated: torch.Tensor
    violated_adaptive: torch.Tensor | None


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
    suite: Sequence[Attack] | None = None,
    generator: torch.Generator | None = None,
) -> AuditOutcome:
    """Attack each eligible sample within ``fraction`` x its ``radius`` (B,).

    l2-PGD takes ``steps`` steps of 2.5 x budget / steps (the usual choice). With ``start`` (one (B, ...)
    tensor per modality, e.g. the examples of an attack at another budget) it continues from its
    perturbation rescaled to each sample's budget; without it PGD starts at the clean inputs. With
    ``suite``, the samples PGD left standing are attacked by it in the same balls (``generator`` draws
    its random starts).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"audit fraction must be in (0, 1], got {fraction}")
    eligible = radius > 0
    violated = torch.zeros_like(eligible)
    adaptive = torch.zeros_like(eligible) if suite is not None else None
    if not bool(eligible.any()):
        return AuditOutcome(eligible, violated, adaptive)
    subset = [x[eligible] for x in inputs]
    ball = Ball.around(subset, fraction * radius[eligible], pixel_ranges=pixel_ranges)
    attack = L2PGD(steps=steps, step_fraction=min(1.0, 2.5 / steps))
    warm = None if start is None else rescaled(subset, [x[eligible] for x in start], ball.budget)
    adversarial = attack(model, subset, labels[eligible], ball, start=warm).adversarial
    broken = predict(model, adversarial) != labels[eligible]
    violated[eligible] = broken
    if suite is not None:
        standing = (~broken).nonzero().squeeze(1)
        outcome = run_suite(model, [x[standing] for x in subset], labels[eligible][standing], ball.subset(standing), suite,
                            generator=generator)
        broken[standing] = outcome.broken
        adaptive[eligible] = broken
    return AuditOutcome(eligible, violated, adaptive)
