"""The adaptive evaluation of a data set: the suite (:mod:`~crmt.robustness.suite`) on every correctly
classified sample, in every scope of the paper's Table 2, and the sanity checks (:mod:`~crmt.robustness.sanity`).

:class:`AdaptiveEvaluator` is fed the batches the paper's protocol evaluated (``add``): it keeps their
correctly classified samples with their clean logits and features and the paper's FGM and PGD outcomes,
and attacks them once ``settings.adaptive.chunk`` samples are waiting, every scope's ball (the table's
budget on all modalities, or on one) stacked into one batch, so that Square's sequential queries serve
many samples at once. ``finish`` attacks the rest and runs the checks that need attacks of their own on
``sanity_samples`` samples: with the split's ``dataset_size``, the dataset indices spread evenly over it
(:func:`~crmt.robustness.smoothing.evenly_spaced`; splits are often stored class by class, and the
large-budget check needs samples of several classes), else the first ones of each rank. Per sample and
scope it records which attack of the suite broke it first (:data:`STANDING`: none; :data:`NOT_ATTACKED`:
misclassified clean, not attacked).

With ``progress`` (a :class:`~crmt.robustness.progress.Progress`), the suite announces itself before its
first chunk (the suite's attacks with their steps, starts, targets and queries, the test clips, the scopes),
prints the time left measured on that chunk (its seconds per test clip it covered, misclassified ones
included, times the test clips still to come on this rank: the rest is assumed as often correctly
classified, and as hard to attack, as the first chunk's), shows a bar over this rank's test clips, and
prints the totals of the suite and of the sanity checks in ``finish``. Timing changes no draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from crmt.distributed import AllGather
from crmt.models.protocol import MultiModalModel
from crmt.robustness.attack import CleanPass
from crmt.robustness.ball import Ball, PixelRanges
from crmt.robustness.modes import float32_math
from crmt.robustness.progress import CostTask, Progress, plural
from crmt.robustness.sanity import SanityCheck, passes_differ, provable_budgets, zero_gradients
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import evenly_spaced
from crmt.robustness.suite import GRADIENT_FREE, run_suite, suite_attacks
from crmt.robustness.threats import Scope

STANDING = -1
"""``broken_by`` of a sample the suite left standing."""
NOT_ATTACKED = -2
"""``broken_by`` of a sample misclassified without attack (not attacked)."""


@dataclass
class _Waiting:
    """Correctly classified samples of one batch waiting for the suite: their ``rows`` in the batch,
    ``inputs``, ``labels``, clean pass (logits and features) and, per scope, whether the paper's FGM or
    PGD broke them."""

    batch: int
    rows: torch.Tensor
    inputs: list[torch.Tensor]
    labels: torch.Tensor
    clean: CleanPass
    paper_broken: dict[Scope, torch.Tensor]


@dataclass
class _SanitySamples:
    """Sanity samples of one batch: their ``rows`` in it, inputs, labels, clean correctness and, per scope,
    whether the paper's FGM or PGD broke them."""

    batch: int
    rows: torch.Tensor
    inputs: list[torch.Tensor]
    labels: torch.Tensor
    correct: torch.Tensor
    paper_broken: dict[Scope, torch.Tensor]


class AdaptiveEvaluator:
    """The suite and the sanity checks over the batches of one evaluation (see the module docstring)."""

    def __init__(
        self, model: MultiModalModel, settings: RobustnessSettings, pixel_ranges: PixelRanges | None = None,
        dataset_size: int | None = None, progress: Progress | None = None, expected: int | None = None,
    ) -> None:
        if settings.adaptive is None:
            raise ValueError("AdaptiveEvaluator needs settings.adaptive")
        self.model, self.settings, self.adaptive = model, settings, settings.adaptive
        self.modalities = list(model.modalities)
        self.scopes = Scope.every(self.modalities)
        self.pixel_ranges = tuple(pixel_ranges) if pixel_ranges is not None else (None,) * len(self.modalities)
        self.generator = torch.Generator().manual_seed(self.adaptive.seed)
        self.attacks = suite_attacks(self.adaptive.size, model.num_classes)
        self.names = [attack.name for attack in self.attacks]
        self.waiting: list[_Waiting] = []
        self.broken_by: list[dict[Scope, torch.Tensor]] = []
        self.sanity: list[_SanitySamples] = []
        count = self.adaptive.sanity_samples
        self.chosen = evenly_spaced(dataset_size, count) if dataset_size is not None and count else None
        self.counts = {"zero_gradients": [0, 0], "weaker_than_paper": [0, 0], "black_box": [0, 0]}
        self.progress = progress
        self.expected = expected
        """Test samples this rank will be fed, when known: the total of the announcement and the bar."""
        self.task: CostTask | None = None
        self.fed = 0  # test samples taken by ``add``
        self.covered = 0  # of them, those whose correctly classified ones the suite has attacked

    def announcement(self) -> str:
        """What the suite runs: its attacks and sizes, on how many test clips, in how many scopes."""
        size, ranks = self.adaptive.size, self.progress.ranks if self.progress is not None else 1
        targets = min(size.targets, self.model.num_classes - 1)
        gradient_steps = size.apgd_steps * size.restarts * (1 + targets)
        if self.expected is None:
            clips = "every test clip"
        elif ranks > 1:
            clips = f"about {ranks * self.expected} test clips (all {ranks} ranks together; {self.expected} on this rank),"
        else:
            clips = plural(self.expected, "test clip")
        return (
            f"the {self.adaptive.suite!r} suite, APGD-CE ({size.apgd_steps} steps x {size.restarts} start), APGD-T "
            f"({targets} targets x {size.apgd_steps} steps x {size.restarts} start), Square l2 ({size.square_queries} "
            f"queries): up to {gradient_steps} gradient steps and {size.square_queries} queries per clip and scope, on "
            f"the correctly classified ones of {clips} in {len(self.scopes)} scopes, {self.adaptive.chunk} at a time; "
            f"then its sanity checks on {plural(self.adaptive.sanity_samples, 'clip')}; time left estimated from the "
            "first chunk"
        )

    def add(
        self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, index: torch.Tensor, clean: CleanPass,
        paper_broken: dict[Scope, torch.Tensor],
    ) -> None:
        """Take one batch: ``index`` (B,) its dataset indices (or running row numbers), ``clean`` its clean
        pass, ``paper_broken`` per scope (B,) whether the paper's FGM or PGD broke the sample."""
        batch = len(self.broken_by)
        correct = clean.logits.argmax(dim=1) == labels
        size = int(labels.shape[0])
        self.fed += size
        self.broken_by.append({scope: torch.full((size,), NOT_ATTACKED, dtype=torch.long, device=labels.device) for scope in self.scopes})
        self.counts["zero_gradients"][0] += int((zero_gradients(clean.gradients) & correct).sum())
        self.counts["zero_gradients"][1] += int(correct.sum())
        chosen = self._sanity_rows(index)
        if chosen.numel():
            self.sanity.append(_SanitySamples(
                batch, chosen, [x[chosen].detach().clone() for x in inputs], labels[chosen].clone(), correct[chosen].clone(),
                {scope: broken[chosen].clone() for scope, broken in paper_broken.items()},
            ))
        rows = correct.nonzero().squeeze(1)
        if rows.numel():
            self.waiting.append(_Waiting(
                batch, rows, [x[rows].detach().clone() for x in inputs], labels[rows].clone(),
                CleanPass(clean.logits[rows].detach(), [], [f[rows].detach() for f in clean.features]),
                {scope: broken[rows] for scope, broken in paper_broken.items()},
            ))
        if sum(int(w.labels.shape[0]) for w in self.waiting) >= self.adaptive.chunk:
            self.attack_waiting()

    def _sanity_rows(self, index: torch.Tensor) -> torch.Tensor:
        """The rows of a batch (dataset indices ``index``) that are sanity samples."""
        if self.chosen is not None:
            return torch.tensor([i for i, value in enumerate(index.tolist()) if value in self.chosen], dtype=torch.long,
                                device=index.device)
        room = self.adaptive.sanity_samples - sum(int(s.labels.shape[0]) for s in self.sanity)
        return torch.arange(max(min(room, int(index.shape[0])), 0), device=index.device)

    def _stacked_ball(self, budgets: Sequence[torch.Tensor], scopes: Sequence[Scope]) -> Ball:
        """The ball of the stacked rows: per block of rows its scope's modalities and its ``budgets``."""
        attacked = [[self.modalities.index(name) for name in scope.modalities] for scope in scopes]
        return Ball.blocks(budgets, attacked, self.pixel_ranges)

    def attack_waiting(self) -> None:
        """Run the suite on every waiting sample in every scope, as one stacked batch (timed and counted, with
        ``progress``, as the test samples fed since the last chunk)."""
        if not self.waiting:
            return
        units, self.covered = self.fed - self.covered, self.fed
        if self.progress is None:
            self._attack_waiting()
            return
        if self.task is None:
            self.task = self.progress.task("Adaptive evaluation", self.announcement(), self.expected, "test clip")
        with self.task.step(units):
            self._attack_waiting()

    def _attack_waiting(self) -> None:
        inputs = [torch.cat([w.inputs[m] for w in self.waiting]) for m in range(len(self.modalities))]
        labels = torch.cat([w.labels for w in self.waiting])
        clean = CleanPass(torch.cat([w.clean.logits for w in self.waiting]), [],
                          [torch.cat([w.clean.features[m] for w in self.waiting]) for m in range(len(self.modalities))])
        count = int(labels.shape[0])
        blocks = len(self.scopes)
        budgets = [torch.full((count,), self.settings.budget(scope), dtype=inputs[0].dtype, device=labels.device) for scope in self.scopes]
        stacked = CleanPass(_repeat(clean.logits, blocks), [], [_repeat(f, blocks) for f in clean.features])
        with torch.inference_mode(False), float32_math():
            outcome = run_suite(
                self.model, [_repeat(x, blocks) for x in inputs], labels.repeat(blocks),
                self._stacked_ball(budgets, self.scopes), self.attacks, clean=stacked, generator=self.generator,
            )
        black_box = [self.names.index(name) for name in GRADIENT_FREE if name in self.names]
        for block, scope in enumerate(self.scopes):
            broken_by = outcome.broken_by[block * count:(block + 1) * count]
            paper = torch.cat([w.paper_broken[scope] for w in self.waiting])
            self.counts["weaker_than_paper"][0] += int((paper & (broken_by == STANDING)).sum())
            self.counts["weaker_than_paper"][1] += int(paper.sum())
            only_black_box = torch.isin(broken_by, torch.tensor(black_box, device=broken_by.device)) & ~paper
            self.counts["black_box"][0] += int(only_black_box.sum())
            self.counts["black_box"][1] += count
            offset = 0
            for w in self.waiting:
                size = int(w.labels.shape[0])
                self.broken_by[w.batch][scope][w.rows] = broken_by[offset:offset + size]
                offset += size
        self.waiting = []

    def finish(self, all_gather: AllGather | None = None) -> list[SanityCheck]:
        """Attack the waiting samples and run the sanity checks; every rank must call it (collectives).
        Returns the checks with counts summed over ranks."""
        self.attack_waiting()
        if self.task is not None:
            self.task.advance(self.fed - self.covered, 0.0)  # the last clips, all misclassified: nothing to attack
            self.covered = self.fed
            self.task.close()
        if self.progress is not None and self.sanity:
            count = sum(int(s.labels.shape[0]) for s in self.sanity)
            with self.progress.timed("Adaptive sanity checks", (
                "randomness, the suite's gradient attacks at a provable budget and the suite at twice its steps, "
                f"starts and queries, on {plural(count, 'clip')}"
                + (" of this rank" if self.progress.ranks > 1 else ""))):
                sanity = self._sanity_counts()
        else:
            sanity = self._sanity_counts()
        local = {key: tuple(values) for key, values in self.counts.items()}
        local.update(sanity)
        keys = list(local)
        counts = torch.tensor([value for key in keys for value in local[key]], dtype=torch.long)
        if all_gather is not None:
            counts = all_gather(counts.to(self.model.device)).reshape(-1, counts.numel()).sum(dim=0).cpu()
        totals = {key: (int(counts[2 * i]), int(counts[2 * i + 1])) for i, key in enumerate(keys)}
        tolerances = {"large_budget": self.adaptive.large_budget_tolerance, "not_converged": self.adaptive.convergence_tolerance}
        notes = {
            "large_budget": "multi-modal scope, the suite's gradient attacks at each sample's distance to the nearest "
                            "correctly classified sample of another class",
            "not_converged": f"the suite at {self.adaptive.size.doubled().describe()}, other random draws",
        }
        order = ["randomness", "zero_gradients", "weaker_than_paper", "black_box", "large_budget", "not_converged"]
        return [SanityCheck(key, *totals[key], tolerances.get(key, 0.0), notes.get(key, "")) for key in order]

    def _sanity_counts(self) -> dict[str, tuple[int, int]]:
        """(count, checked) of the checks run on the sanity samples: randomness, large budget, convergence."""
        if not self.sanity:
            return {"randomness": (0, 0), "large_budget": (0, 0), "not_converged": (0, 0)}
        inputs = [torch.cat([s.inputs[m] for s in self.sanity]) for m in range(len(self.modalities))]
        labels = torch.cat([s.labels for s in self.sanity])
        correct = torch.cat([s.correct for s in self.sanity])
        count = int(labels.shape[0])
        with torch.inference_mode(False), float32_math():
            differ = passes_differ(self.model, inputs)
            large = self._large_budget(inputs, labels, correct)
            converged = self._convergence(inputs, labels, count)
        return {"randomness": (int(differ.sum()), count), "large_budget": large, "not_converged": converged}

    def _large_budget(self, inputs: list[torch.Tensor], labels: torch.Tensor, correct: torch.Tensor) -> tuple[int, int]:
        budgets = provable_budgets(inputs, labels, correct)
        rows = torch.isfinite(budgets).nonzero().squeeze(1)
        if rows.numel() == 0:
            return 0, 0
        subset = [x[rows] for x in inputs]
        ball = self._stacked_ball([budgets[rows]], [self.scopes[0]])
        gradient = [a for a in self.attacks if a.name not in GRADIENT_FREE]
        outcome = run_suite(self.model, subset, labels[rows], ball, gradient, generator=torch.Generator().manual_seed(self.adaptive.seed + 1))
        return int((~outcome.broken).sum()), int(rows.numel())

    def _convergence(self, inputs: list[torch.Tensor], labels: torch.Tensor, count: int) -> tuple[int, int]:
        """(newly broken, checked) sample-scope pairs: the suite at twice its size on the pairs standing after
        the suite and the paper's attacks, among the clean-correct ones."""
        broken_by = {scope: torch.cat([self.broken_by[s.batch][scope][s.rows] for s in self.sanity]) for scope in self.scopes}
        paper = {scope: torch.cat([s.paper_broken[scope] for s in self.sanity]) for scope in self.scopes}
        checked = sum(int((broken_by[scope] != NOT_ATTACKED).sum()) for scope in self.scopes)
        rows = [((broken_by[scope] == STANDING) & ~paper[scope]).nonzero().squeeze(1) for scope in self.scopes]
        if sum(r.numel() for r in rows) == 0:
            return 0, checked
        budgets = [torch.full((r.numel(),), self.settings.budget(scope), dtype=inputs[0].dtype, device=labels.device)
                   for r, scope in zip(rows, self.scopes, strict=True)]
        doubled = suite_attacks(self.adaptive.size.doubled(), self.model.num_classes)
        outcome = run_suite(
            self.model, [torch.cat([x[r] for r in rows]) for x in inputs], torch.cat([labels[r] for r in rows]),
            self._stacked_ball(budgets, self.scopes), doubled, generator=torch.Generator().manual_seed(self.adaptive.seed + 2),
        )
        return int(outcome.broken.sum()), checked


def _repeat(x: torch.Tensor, blocks: int) -> torch.Tensor:
    """``blocks`` copies of the (B, ...) tensor ``x`` stacked along the batch: (blocks B, ...)."""
    return x.repeat(blocks, *([1] * (x.ndim - 1)))
