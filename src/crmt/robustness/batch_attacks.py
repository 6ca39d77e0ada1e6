"""The paper's protocol on one batch: its attacks, stacked, and the accuracy-vs-radius curves.

:class:`BatchAttacks` holds one batch's clean logits, ascent directions and features and runs the
table's attacks (FGM and l2-PGD, :mod:`~crmt.robustness.pgd`) on them: only correctly classified
samples are attacked (a misclassified sample counts as broken under every attack), and attacks with
the same steps run as one stacked batch, each sample with its own budget and attacked modalities
(one :class:`~crmt.robustness.ball.Ball`), so that every encoder runs once per step on all the samples
that need it. The curves continue from the table's attacks (see :meth:`BatchAttacks.curves`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from crmt.models.protocol import MultiModalModel
from crmt.robustness.attack import CleanPass, clean_pass, missing_modality
from crmt.robustness.ball import Ball, PixelRanges, rescaled
from crmt.robustness.certificates import LipschitzEstimator
from crmt.robustness.modes import eval_mode, exact_float32
from crmt.robustness.pgd import L2PGD
from crmt.robustness.settings import RobustnessSettings
class PlannedAttack(NamedTuple):
    """One attack of a batch: the ``attacked`` modalities of the samples ``rows`` (B,) bool, within
    l2 budget ``eps``, from ``start`` (one full-size tensor per modality) or the clean inputs."""

    attacked: Sequence[int]
    rows: torch.Tensor
    eps: float
    start: Sequence[torch.Tensor] | None = None


class Outcome(NamedTuple):
    """An attack's (B,) correctness (False outside its rows) and full-size adversarial inputs
    (the clean inputs outside its rows)."""

    correct: torch.Tensor
    adversarial: list[torch.Tensor]


class BatchAttacks:
    """The attacks of one batch, sharing its clean logits, ascent directions and features.

    Only samples that are classified correctly are attacked (a misclassified sample counts as
    broken under every attack), as robust-accuracy evaluations usually do. Attacks with the same
    steps run as one stacked batch, each sample with its own budget and attacked modalities, so
    that every encoder runs once per step on all the samples that need it.
    """

    def __init__(
        self,
        model: MultiModalModel,
        inputs: Sequence[torch.Tensor],
        labels: torch.Tensor,
        settings: RobustnessSettings,
        pixel_ranges: PixelRanges | None,
        generator: torch.Generator | None,
        estimator: LipschitzEstimator | None,
    ) -> None:
        self.model, self.settings, self.generator = model, settings, generator
        self.pixel_ranges = tuple(pixel_ranges) if pixel_ranges is not None else (None,) * len(inputs)
        with exact_float32():  # the logits every certificate of the report is computed from
            clean = estimator.clean_pass(inputs, labels) if estimator is not None else clean_pass(model, inputs, labels)
        self.logits, self.gradients, self.features = clean
        self.inputs = [x.clone() for x in inputs]
        self.labels = labels.clone()
        self.clean = self.logits.argmax(dim=1) == self.labels

    def run(self, attack: L2PGD, attacks: Sequence[PlannedAttack]) -> list[Outcome]:
        """Run ``attack``'s steps (budgets and modalities are the attacks' own) on all ``attacks``
        at once. Attacks from the clean inputs take their first step along the clean gradient;
        all or none of them may have a start."""
        if len({a.start is None for a in attacks}) > 1:
            raise ValueError("stacked attacks must all continue from a start, or none")
        index = [a.rows.nonzero().squeeze(1) for a in attacks]
        modalities = range(len(self.inputs))
        clean = [torch.cat([x[i] for i in index]) for x in self.inputs]
        ball = Ball.blocks(
            [torch.full((len(i),), float(a.eps), dtype=clean[0].dtype, device=clean[0].device) for a, i in zip(attacks, index, strict=True)],
            [a.attacked for a in attacks], self.pixel_ranges,
        )
        labels = torch.cat([self.labels[i] for i in index])
        start = None
        if attacks[0].start is not None:
            start = [torch.cat([a.start[m][i] for a, i in zip(attacks, index, strict=True)]) for m in modalities]
        adversarial, correct = clean, labels.new_zeros(0, dtype=torch.bool)
        if labels.shape[0]:
            rows = torch.cat(index)
            result = attack(
                self.model, clean, labels, ball, start=start,
                clean=CleanPass(self.logits[rows], [g[rows] for g in self.gradients], [f[rows] for f in self.features]),
                generator=self.generator,
            )
            adversarial, correct = result.adversarial, ~result.broken
        outcomes, offset = [], 0
        for a, i in zip(attacks, index, strict=True):
            part = slice(offset, offset + len(i))
            offset += len(i)
            still = torch.zeros_like(self.clean)
            still[i] = correct[part]
            full = list(self.inputs)
            for m in a.attacked:
                full[m] = full[m].clone()
                full[m][i] = adversarial[m][part]
            outcomes.append(Outcome(still, full))
        return outcomes

    def clean_pass(self) -> CleanPass:
        """The batch's clean pass: logits, ascent directions and features."""
        return CleanPass(self.logits, self.gradients, self.features)

    def missing(self) -> list[torch.Tensor]:
        """(B,) correctness with each modality in turn replaced by the constant fill. In evaluation
        mode the fill's features are the same for every sample, so one filled sample gives them."""
        results = []
        rows = self.clean
        with torch.no_grad(), eval_mode(self.model):
            for m in range(len(self.inputs)):
                still = torch.zeros_like(self.clean)
                if bool(rows.any()):
                    filled = missing_modality([x[:1] for x in self.inputs], m, self.settings.missing_fill)[m]
                    features = [f[rows] for f in self.features]
                    features[m] = self.model.encode_modality(m, filled).expand_as(features[m])
                    still[rows] = self.model.fuse(features).logits.argmax(dim=1) == self.labels[rows]
                results.append(still)
        return results

    def rescaled(self, attacked: Sequence[int], adversarial: Sequence[torch.Tensor], radius: float) -> list[torch.Tensor]:
        """Full-size inputs whose attacked modalities carry ``adversarial``'s perturbation rescaled to ``radius``."""
        budget = torch.full(self.clean.shape, radius, dtype=self.inputs[0].dtype, device=self.clean.device)
        moved = rescaled([self.inputs[m] for m in attacked], [adversarial[m] for m in attacked], budget)
        full = list(self.inputs)
        for m, x in zip(attacked, moved, strict=True):
            full[m] = x
        return full

    def curves(self, tables: Sequence[tuple[Sequence[int], float, Outcome]]) -> list[torch.Tensor]:
        """(B, R) correctness over ``curve_radii`` for each (attacked modalities, table budget, table
        outcome): l2-PGD continued from the table's attack.

        Every curve radius other than the table's takes ``curve_steps`` steps from the adversarial
        perturbation of its neighbour on the table's side, rescaled to the new radius, so the
        whole curve costs a few steps on the samples whose outcome is still open:

        - above the table's budget (increasing): only samples not broken at the next smaller
          radius are attacked;
        - below it (decreasing): only samples broken at the next larger radius are attacked; a
          sample that withstood the larger ball counts as withstanding the smaller one.

        Either way a sample broken at one radius is broken at every larger one; at the table's own
        budget the table's attack is reused. The i-th radius of every side of every curve runs in
        one stacked attack.
        """
        radii = self.settings.curve_radii
        columns: list[dict[float, torch.Tensor]] = []
        sides: list[tuple[int, _CurveSide]] = []
        for curve, (attacked, table_eps, table) in enumerate(tables):
            columns.append({radius: table.correct for radius in radii if abs(radius - table_eps) < 1e-12})
            for upward, side_radii in (
                (True, sorted(r for r in radii if r > table_eps)),
                (False, sorted((r for r in radii if r < table_eps), reverse=True)),
            ):
                if side_radii:
                    sides.append((curve, _CurveSide(list(attacked), side_radii, upward, table.correct, table.adversarial)))
        attack = self.settings.pgd(steps=self.settings.curve_steps)
        level = 0
        while active := [(curve, side) for curve, side in sides if level < len(side.radii)]:
            attacks = [side.attack(level, self) for _, side in active]
            for (curve, side), outcome in zip(active, self.run(attack, attacks), strict=True):
                columns[curve][side.radii[level]] = side.update(outcome)
            level += 1
        empty = self.clean.new_zeros((self.clean.shape[0], 0))
        return [torch.stack([c[radius] for radius in radii], dim=1) if radii else empty for c in columns]


@dataclass
class _CurveSide:
    """The radii of one curve on one side of its table budget, and its state after the last one."""

    attacked: list[int]
    radii: list[float]
    upward: bool
    correct: torch.Tensor
    adversarial: list[torch.Tensor]

    def attack(self, level: int, batch: BatchAttacks) -> PlannedAttack:
        rows = self.correct if self.upward else batch.clean & ~self.correct
        radius = self.radii[level]
        return PlannedAttack(self.attacked, rows, radius, batch.rescaled(self.attacked, self.adversarial, radius))

    def update(self, outcome: Outcome) -> torch.Tensor:
        self.correct = self.correct & outcome.correct if self.upward else self.correct | outcome.correct
        self.adversarial = outcome.adversarial
        return self.correct


