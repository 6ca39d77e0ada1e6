"""Every attack and certificate of a robustness evaluation over a data set, as per-sample records.

:class:`RobustnessEvaluator` is fed batches (``update``) and then ``finalize``-d into
:class:`~crmt.robustness.records.RobustnessResults`; both callbacks (the periodic monitor and the
end-of-run report) use it. Per batch, :func:`evaluate_batch` runs the paper's protocol
(:mod:`~crmt.robustness.batch_attacks`): it computes the clean logits and the loss gradient of every
input once, and reuses them: they give the clean accuracy, every FGM (multi-modal and uni-modal: a
modality's FGM direction is its part of the joint gradient) and the first step of every PGD without
random start; when the Lipschitz table is estimated over the evaluated samples, the estimator's score
gradients give them without a backward pass of their own. The curves continue from the table's
attacks and the radius audit from the multi-modal PGD's examples.

With ``settings.adaptive``, the adaptive suite (:mod:`~crmt.robustness.adaptive`) attacks every
correctly classified sample within each PGD column's ball; its ``adaptive`` threats (one per scope) are
the worst case over the suite and the paper's FGM and PGD, and the audit is repeated under the suite's
gradient attacks (APGD-CE, APGD-T: the gradient-free Square attack, the masking check, is run and judged
in the evaluation itself, where its query budget is spent once per sample rather than once per radius).
With ``settings.smoothing``, ``smoothing.samples`` samples spread evenly over the test split (the first
ones of each rank when the split's size is not given) are also certified by randomized smoothing
(:class:`~crmt.robustness.smoothing.SmoothingCertifier`), per scope.

Costly steps announce themselves (:meth:`RobustnessEvaluator.show_progress`,
:mod:`~crmt.robustness.progress`): smoothing and the adaptive suite print what they run, on how many clips,
with how many draws, steps or queries, the time left measured on their first clip or chunk, and show a bar;
so does the radius audit when it runs the suite's attacks.

Records (per sample, see :class:`~crmt.robustness.records.BatchRecords`): the label, the clean logits
(K,), the dataset index (when the batches carry one), one bool per
:class:`~crmt.robustness.threats.Threat` of the paper's Table 2 (True where the attacked sample is still
classified correctly), the accuracy curve (R,) over ``curve_radii`` per
:class:`~crmt.robustness.threats.Scope` (multi-modal, each modality) and which attack of the suite broke it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import NamedTuple

import torch

from crmt.distributed import AllGather, gather_rows
from crmt.models.protocol import CertifiableModel, MultiModalModel, is_certifiable
from crmt.robustness.adaptive import AdaptiveEvaluator
from crmt.robustness.attack import CleanPass
from crmt.robustness.audit import audit_radii
from crmt.robustness.ball import PixelRanges
from crmt.robustness.batch_attacks import BatchAttacks, PlannedAttack
from crmt.robustness.certificates import LipschitzEstimator, sound_pair_lipschitz
from crmt.robustness.certify import certified_radius
from crmt.robustness.modes import float32_math
from crmt.robustness.pgd import FGM
from crmt.robustness.progress import Progress, plural
from crmt.robustness.records import (
    CONSTRUCTION_LIPSCHITZ_SOURCE,
    EVALUATED_LIPSCHITZ_SOURCE,
    MODEL_LIPSCHITZ_SOURCE,
    MODEL_SOUND_LIPSCHITZ_SOURCE,
    SOUND_LIPSCHITZ_SOURCE,
    BatchRecords,
    CertifiedRadii,
    RobustnessResults,
)
from crmt.robustness.results import AuditCounts
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import JOINT_SCOPE, SmoothedCertificates, SmoothingCertifier
from crmt.robustness.suite import GRADIENT_FREE, suite_attacks
from crmt.robustness.threats import Scope, Threat

ReduceMax = Callable[[torch.Tensor], torch.Tensor]


class BatchEvaluation(NamedTuple):
    """What :func:`evaluate_batch` returns: the per-sample ``records`` of the paper's protocol,
    ``adversarial``, the multi-modal table PGD's examples (one (B, ...) tensor per modality; the clean
    inputs where a sample was not attacked), from which the radius audit starts, and the batch's
    ``clean`` pass."""

    records: BatchRecords
    adversarial: list[torch.Tensor]
    clean: CleanPass


def evaluate_batch(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    settings: RobustnessSettings,
    pixel_ranges: PixelRanges | None = None,
    generator: torch.Generator | None = None,
    estimator: LipschitzEstimator | None = None,
) -> BatchEvaluation:
    """Every attack of the paper's table and the curves on one batch; the batch is folded into
    ``estimator`` too, sharing its clean pass.

    Runs outside inference mode (Lightning evaluates under it), so that every tensor made here
    can be updated in place and differentiated, and in float32 (autocast off).
    """
    with torch.inference_mode(False), float32_math():
        batch = BatchAttacks(model, inputs, labels, settings, pixel_ranges, generator, estimator)
        modalities = list(model.modalities)
        scopes = Scope.every(modalities)
        tables = [([modalities.index(name) for name in scope.modalities], settings.budget(scope)) for scope in scopes]
        clean_attacks = [PlannedAttack(attacked, batch.clean, eps) for attacked, eps in tables]
        fgm = batch.run(FGM(), clean_attacks)
        pgd = batch.run(settings.pgd(), clean_attacks)
        missing = batch.missing()
        curves = batch.curves([(attacked, eps, outcome) for (attacked, eps), outcome in zip(tables, pgd, strict=True)])
        correct_by_kind = {
            "fgm": {scope: outcome.correct for scope, outcome in zip(scopes, fgm, strict=True)},
            "pgd": {scope: outcome.correct for scope, outcome in zip(scopes, pgd, strict=True)},
            "missing": dict(zip(scopes[1:], missing, strict=True)),
        }
        correct = {
            threat: batch.clean if threat.kind == "clean" else correct_by_kind[threat.kind][threat.scope]
            for threat in settings.threats(modalities) if threat.kind != "adaptive"
        }
        records = BatchRecords(batch.labels, batch.logits, correct, dict(zip(scopes, curves, strict=True)), {})
        return BatchEvaluation(records, pgd[0].adversarial, batch.clean_pass())


class _AuditChunk(NamedTuple):
    """Stored samples of one batch for the radius audit: clean ``inputs``, ``labels``, clean
    ``logits`` and ``start``, the multi-modal table PGD's examples."""

    inputs: list[torch.Tensor]
    labels: torch.Tensor
    logits: torch.Tensor
    start: list[torch.Tensor]


class RobustnessEvaluator:
    """Accumulates :func:`evaluate_batch` records and Lipschitz estimates (and, with
    ``settings.adaptive``, the adaptive suite's outcomes); ``finalize`` certifies and audits.

    Every model's radii (``certified``) come from one protocol, so that they compare across
    strategies: the pair Lipschitz table estimated over the evaluated samples themselves. A
    model with a table of its own (CRMT after its phase switch: tau~ over the training set, as
    in the paper) also gets ``certified_model`` from it, reported beside and labelled.

    With ``settings.smoothing``, every model (certifiable or not) is also certified by randomized
    smoothing: the samples' noise is seeded by their dataset index, the running row number of this
    rank when the batches carry none; ``dataset_size`` (the test split's) spreads the certified
    samples, and the adaptive evaluation's sanity samples, evenly over it.
    """

    def __init__(
        self, model: MultiModalModel, settings: RobustnessSettings, pixel_ranges: PixelRanges | None = None,
        dataset_size: int | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.pixel_ranges = pixel_ranges
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.batches: list[BatchRecords] = []
        self.indices: list[torch.Tensor] = []
        self.audit_chunks: list[_AuditChunk] = []
        self.certifiable: CertifiableModel | None = model if settings.certify and is_certifiable(model) else None
        self.estimator = LipschitzEstimator(self.certifiable) if self.certifiable is not None else None
        self.smoother = (
            SmoothingCertifier(model, settings.smoothing, dataset_size) if settings.smoothing is not None else None
        )
        self.adaptive = AdaptiveEvaluator(model, settings, pixel_ranges, dataset_size) if settings.adaptive is not None else None
        self.seen = 0  # samples evaluated on this rank
        self.progress: Progress | None = None

    def show_progress(self, progress: Progress, samples: int | None = None) -> None:
        """Announce smoothing, the adaptive suite and the suite's radius audit through ``progress`` (what runs,
        on how many clips, the time left measured on their first clip or chunk, a bar); ``samples``: the test
        samples this rank will be fed, when known. Changes no result."""
        self.progress = progress
        for part in (self.smoother, self.adaptive):
            if part is not None:
                part.progress, part.expected = progress, samples

    @property
    def audit_count(self) -> int:
        return sum(int(chunk.labels.shape[0]) for chunk in self.audit_chunks)

    def update(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Evaluate one batch (inputs in the model's modality order, labels (B,), dataset indices (B,) if known)."""
        records, adversarial, clean = evaluate_batch(
            self.model, inputs, labels, self.settings, self.pixel_ranges, self.generator, self.estimator
        )
        self.batches.append(BatchRecords(
            records.labels.detach(), records.logits.detach(),
            {threat: value.detach() for threat, value in records.correct.items()},
            {scope: value.detach() for scope, value in records.curves.items()}, {},
        ))
        if index is not None:
            self.indices.append(index.detach().clone())
        rows = index if index is not None else torch.arange(self.seen, self.seen + labels.shape[0])
        if self.adaptive is not None:
            with torch.inference_mode(False):
                self.adaptive.add(inputs, labels, rows, clean, self._paper_broken(records))
        if self.smoother is not None:
            self.smoother.update(inputs, labels, rows)
        self.seen += int(labels.shape[0])
        room = self.settings.audit_samples - self.audit_count
        if self.certifiable is not None and room > 0:
            with torch.inference_mode(False):
                self.audit_chunks.append(
                    _AuditChunk(
                        [x[:room].detach().clone() for x in inputs],
                        labels[:room].detach().clone(),
                        records.logits[:room],
                        [x[:room] for x in adversarial],
                    )
                )

    def _paper_broken(self, records: BatchRecords) -> dict[Scope, torch.Tensor]:
        """Per scope (B,): a correctly classified sample that the paper's FGM or PGD broke."""
        clean = records.correct[Threat("clean")]
        broken = {}
        for scope in Scope.every(list(self.model.modalities)):
            budget = self.settings.budget(scope)
            paper = [records.correct[Threat(kind, scope.modalities, budget)] for kind in ("fgm", "pgd")]
            broken[scope] = clean & ~(paper[0] & paper[1])
        return broken

    def _with_adaptive(self) -> None:
        """Every batch's records completed with the adaptive threats (in Table-2 order) and the suite's codes."""
        modalities = list(self.model.modalities)
        for number, records in enumerate(self.batches):
            codes = self.adaptive.broken_by[number]
            correct = {}
            for threat in self.settings.threats(modalities):
                if threat.kind == "adaptive":
                    paper = [records.correct[Threat(kind, threat.attacked, threat.budget)] for kind in ("fgm", "pgd")]
                    correct[threat] = paper[0] & paper[1] & (codes[threat.scope] == -1)
                else:
                    correct[threat] = records.correct[threat]
            self.batches[number] = records._replace(correct=correct, broken_by=codes)

    def finalize(self, all_gather: AllGather | None = None, reduce_max: ReduceMax | None = None) -> RobustnessResults:
        """Gather every rank's records, certify and audit. Every rank must call it (collectives)."""
        if not self.batches:
            raise ValueError("no batch was evaluated")
        checks = []
        if self.adaptive is not None:
            checks = self.adaptive.finish(all_gather)
            self._with_adaptive()

        def gathered(chunks: Sequence[torch.Tensor]) -> torch.Tensor:
            return gather_rows(all_gather, torch.cat(list(chunks)))

        first = self.batches[0]
        results = RobustnessResults(
            modalities=list(self.model.modalities),
            settings=self.settings,
            labels=gathered([batch.labels for batch in self.batches]),
            logits=gathered([batch.logits for batch in self.batches]),
            correct={threat: gathered([batch.correct[threat] for batch in self.batches]) for threat in first.correct},
            curves={scope: gathered([batch.curves[scope] for batch in self.batches]) for scope in first.curves},
            index=gathered(self.indices) if len(self.indices) == len(self.batches) else None,
            smoothed=self._smoothed(all_gather),
            broken_by={scope: gathered([batch.broken_by[scope] for batch in self.batches]) for scope in first.broken_by},
            adaptive_attacks=self.adaptive.names if self.adaptive is not None else [],
            checks=checks,
        )
        model = self.certifiable
        if model is None:
            results.sound_note = "the model is not certifiable" if self.settings.certify else ""
            return results
        logits, labels, modalities = results.logits, results.labels, results.modalities
        table = self.estimator.pair_lipschitz(reduce_max)
        results.certified = CertifiedRadii.of(EVALUATED_LIPSCHITZ_SOURCE, table, logits, labels, modalities)
        known = model.known_pair_lipschitz()
        if known is not None:
            source = MODEL_SOUND_LIPSCHITZ_SOURCE if getattr(model, "tau_is_sound", False) else MODEL_LIPSCHITZ_SOURCE
            results.certified_model = CertifiedRadii.of(source, known, logits, labels, modalities)
        results.audit = self._audit(table, all_gather)
        if self.settings.sound_certificate:
            try:
                sound = sound_pair_lipschitz(model)
            except NotImplementedError as error:
                results.sound_note = f"no sound bound: {error}"
            else:
                by_construction = getattr(model, "encoders_bounded_by_construction", False)
                source = CONSTRUCTION_LIPSCHITZ_SOURCE if by_construction else SOUND_LIPSCHITZ_SOURCE
                results.certified_sound = CertifiedRadii.of(source, sound, logits, labels, modalities)
                if self.settings.audit_sound:
                    results.audit = replace(results.audit, sound=self._audit(sound, all_gather, "sound"))
        return results

    def _smoothed(self, all_gather: AllGather | None) -> dict[Scope, SmoothedCertificates] | None:
        """Every rank's smoothing certificates, keyed by scope ("joint": the multi-modal scope)."""
        if self.smoother is None:
            return None
        modalities = list(self.model.modalities)
        scopes = {JOINT_SCOPE: Scope(tuple(modalities)), **{name: Scope((name,)) for name in modalities}}
        return {scopes[name]: certificates for name, certificates in self.smoother.finalize(all_gather).items()}

    def _audit(self, table: torch.Tensor, all_gather: AllGather | None, radii: str = "estimated") -> AuditCounts:
        """Attack this rank's stored samples just inside their radii from ``table`` (with the adaptive suite's
        gradient attacks too, when evaluated); counts summed over ranks. ``radii`` names them in the announcement."""
        adaptive = self.settings.adaptive
        suite = None
        if adaptive is not None:
            suite = [a for a in suite_attacks(adaptive.size, self.model.num_classes) if a.name not in GRADIENT_FREE]
        generator = torch.Generator().manual_seed(adaptive.seed + 3) if adaptive is not None else None
        eligible_count = violated_count = adaptive_count = 0
        if self.audit_chunks:
            chunks = self.audit_chunks
            inputs = [torch.cat([chunk.inputs[m] for chunk in chunks]) for m in range(len(chunks[0].inputs))]
            start = [torch.cat([chunk.start[m] for chunk in chunks]) for m in range(len(chunks[0].start))]
            labels, logits = torch.cat([chunk.labels for chunk in chunks]), torch.cat([chunk.logits for chunk in chunks])
            radius = certified_radius(logits, labels, table.to(logits.device))
            announce = self.progress is not None and suite is not None
            timed = self.progress.timed("Radius audit", (
                f"l2-PGD ({self.settings.audit_steps} steps), then the suite's APGD-CE and APGD-T on the clips it "
                f"left standing, at {self.settings.audit_fraction} x each {radii} radius, "
                f"{plural(int(labels.shape[0]), 'clip')}" + (" of this rank" if self.progress.ranks > 1 else "")
            )) if announce else nullcontext()
            with timed, torch.inference_mode(False), float32_math():
                outcome = audit_radii(
                    self.model, inputs, labels, radius, self.pixel_ranges,
                    steps=self.settings.audit_steps, fraction=self.settings.audit_fraction, start=start,
                    suite=suite, generator=generator,
                )
            eligible_count, violated_count = int(outcome.eligible.sum()), int(outcome.violated.sum())
            if outcome.violated_adaptive is not None:
                adaptive_count = int(outcome.violated_adaptive.sum())
        counts = torch.tensor([eligible_count, violated_count, self.audit_count, adaptive_count])
        if all_gather is not None:
            counts = all_gather(counts.to(self.model.device)).reshape(-1, 4).sum(dim=0).cpu()
        eligible_total, violated_total, attacked, adaptive_total = (int(c) for c in counts)
        return AuditCounts(attacked=attacked, eligible=eligible_total, violations=violated_total,
                           adaptive_violations=adaptive_total if adaptive is not None else None)
