"""The adaptive evaluation: a named suite of attacks whose result per sample is the worst case over all of them.

The suite, stated once (its sizes are named in :data:`SUITES`), in the order it runs, each attack on
the samples every earlier one left standing (AutoAttack's standard set, with Square's l2 version as
the gradient-free member and without FAB-T):

1. ``apgd-ce``: :class:`~crmt.robustness.apgd.APGD` on the cross-entropy, ``apgd_steps`` iterations,
   ``restarts`` random starts;
2. ``apgd-t``: APGD on the targeted DLR loss (scale-invariant: a head that rescales its logits cannot
   weaken it) towards each of the ``targets`` classes of the largest clean logits after the true one
   (at most K - 1), ``apgd_steps`` iterations and ``restarts`` starts each; with K <= 3 classes, where
   the targeted DLR is undefined, the targeted margin loss;
3. ``square``: :class:`~crmt.robustness.square.SquareL2`, ``square_queries`` queries, no gradient.

A sample counts as broken when any iterate of any attack inside its ball is misclassified. The
evaluation (:mod:`~crmt.robustness.adaptive`) also counts the paper's FGM and PGD on the same ball, so
its accuracy is the worst case over every attack tried: an upper bound, only as good as this suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from crmt.models.protocol import MultiModalModel
from crmt.robustness.apgd import APGD
from crmt.robustness.attack import Attack, CleanPass
from crmt.robustness.attack_losses import MIN_CLASSES
from crmt.robustness.ball import Ball
from crmt.robustness.square import SquareL2


@dataclass(frozen=True)
class SuiteSize:
    """What each attack of the suite spends: APGD iterations per run, random starts per run (and per
    target), target classes of APGD-T, Square's queries."""

    apgd_steps: int
    restarts: int
    targets: int
    square_queries: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"SuiteSize.{name} must be >= 1, got {value}")

    def doubled(self) -> SuiteSize:
        """Twice the steps, starts and queries (the convergence check), the same targets."""
        return SuiteSize(2 * self.apgd_steps, 2 * self.restarts, self.targets, 2 * self.square_queries)

    def describe(self) -> str:
        return (f"APGD-CE ({self.apgd_steps} steps x {self.restarts} start), APGD-T (targeted DLR, {self.targets} "
                f"target classes x {self.apgd_steps} steps x {self.restarts} start), Square l2 ({self.square_queries} queries)")


SUITES: dict[str, SuiteSize] = {
    "standard": SuiteSize(apgd_steps=100, restarts=1, targets=9, square_queries=5000),
    "medium": SuiteSize(apgd_steps=25, restarts=1, targets=3, square_queries=300),
    "quick": SuiteSize(apgd_steps=10, restarts=1, targets=2, square_queries=100),
}
"""The named sizes: ``standard`` is AutoAttack's (100 APGD iterations, 1 start, 9 targets, 5000 queries);
``medium``, a comparison over seeds on 2 CPU cores (about a tenth of ``standard``'s cost), and ``quick``,
the quick start's (``make train``), are sized by the measurements in docs/robustness.md."""


NO_SUITE = "none"
"""The suite name that turns the adaptive evaluation off."""


@dataclass(frozen=True)
class AdaptiveSettings:
    """The adaptive evaluation of a report.

    Attributes:
        suite: a name of :data:`SUITES`, or :data:`NO_SUITE` (no adaptive evaluation: how a command line turns
            it off, as jsonargparse cannot set an argument nested in a callback list to null).
        chunk: samples attacked together (each in every scope); larger chunks make Square's sequential
            queries cheaper per sample and cost memory.
        sanity_samples: the samples on which the randomness, large-budget and convergence checks run: the
            dataset indices spread evenly over the split when its size is known, else the first ones of each rank.
        convergence_tolerance: the convergence check is raised when the suite at twice its size lowers the
            accuracy of the checked samples (the sanity samples, in every scope) by more than this.
        large_budget_tolerance: the large-budget check is raised when more than this share of the checked
            samples stands at a budget where an adversarial example provably exists.
        (The checks: :mod:`~crmt.robustness.sanity`.)
        seed: seeds the random starts and searches.
    """

    suite: str = "standard"
    chunk: int = 128
    sanity_samples: int = 32
    convergence_tolerance: float = 0.02
    large_budget_tolerance: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.suite not in SUITES and self.suite != NO_SUITE:
            raise ValueError(f"unknown adaptive suite {self.suite!r}; the named suites are {sorted(SUITES)} "
                             f"({NO_SUITE!r}: none)")
        if self.chunk < 1 or self.sanity_samples < 0:
            raise ValueError(f"chunk must be >= 1 and sanity_samples >= 0, got {self.chunk} and {self.sanity_samples}")
        for name in ("convergence_tolerance", "large_budget_tolerance"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def size(self) -> SuiteSize:
        return SUITES[self.suite]


def suite_attacks(size: SuiteSize, num_classes: int) -> list[Attack]:
    """The suite's attacks at ``size`` for K = ``num_classes``, in the order they run."""
    targeted = "dlr-targeted" if num_classes >= MIN_CLASSES["dlr-targeted"] else "margin-targeted"
    return [
        APGD("ce", size.apgd_steps, size.restarts),
        APGD(targeted, size.apgd_steps, size.restarts, size.targets),
        SquareL2(size.square_queries),
    ]


GRADIENT_FREE = frozenset({"square"})
"""The names of the suite's attacks that use no gradient."""


class SuiteOutcome(NamedTuple):
    """``attacks``: the names in the order they ran; ``broken_by`` (B,) int64: the index of the first
    attack that broke each sample (-1: none); ``adversarial``: one (B, ...) tensor per modality, the
    breaking point where one was found (else the clean input)."""

    attacks: list[str]
    broken_by: torch.Tensor
    adversarial: list[torch.Tensor]

    @property
    def broken(self) -> torch.Tensor:
        return self.broken_by >= 0


def run_suite(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    ball: Ball,
    attacks: Sequence[Attack],
    *,
    clean: CleanPass | None = None,
    generator: torch.Generator | None = None,
) -> SuiteOutcome:
    """Run ``attacks`` in order, each on the samples of ``ball`` that every earlier one left standing."""
    broken_by = torch.full((labels.shape[0],), -1, dtype=torch.long, device=labels.device)
    adversarial = list(inputs)
    for number, attack in enumerate(attacks):
        standing = ((broken_by < 0) & ball.rows()).nonzero().squeeze(1)
        if standing.numel() == 0:
            break
        result = attack(
            model, [x[standing] for x in inputs], labels[standing], ball.subset(standing),
            clean=clean.subset(standing) if clean is not None else None, generator=generator,
        )
        hit = standing[result.broken]
        broken_by[hit] = number
        for m in ball.moving:
            if adversarial[m] is inputs[m]:
                adversarial[m] = inputs[m].clone()
            adversarial[m][hit] = result.adversarial[m][result.broken]
    return SuiteOutcome([attack.name for attack in attacks], broken_by, adversarial)
