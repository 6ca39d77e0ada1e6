"""Every attack and certificate of the paper's protocol over a data set, as per-sample records.

:class:`RobustnessEvaluator` is fed batches (``update``) and then ``finalize``-d into
:class:`RobustnessResults`; both callbacks (the periodic monitor and the end-of-run report)
use it. Per batch it computes the clean logits and the loss gradient of every input once,
and reuses them: they give the clean accuracy, every FGM (multi-modal and uni-modal: a
modality's FGM direction is its part of the joint gradient) and the first step of every PGD
without random start; when the Lipschitz table is estimated over the evaluated samples, the
estimator's score gradients give them without a backward pass of their own. Uni-modal attacks
run only the attacked encoder; the other modalities' features are computed once. The curves
continue from the table's attacks (see ``_BatchAttacks.curves``) and the radius audit from the
multi-modal PGD's examples.

Only correctly classified samples are attacked. Records (per sample, see :class:`BatchRecords`):
the label, the clean logits (K,), the dataset index (when the batches carry one), one bool per
:class:`~crmt.robustness.threats.Threat` of the paper's Table 2, True where the attacked sample is
still classified correctly, and the accuracy curve (R,) over ``curve_radii`` per
:class:`~crmt.robustness.threats.Scope` (multi-modal, each modality).

With ``settings.smoothing``, ``smoothing.samples`` samples spread evenly over the test split (the
first ones of each rank when the split's size is not given) are also certified by randomized
smoothing (:class:`~crmt.robustness.smoothing.SmoothingCertifier`), per scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from crmt.distributed import AllGather, gather_rows
from crmt.models.protocol import CertifiableModel, MultiModalModel, is_certifiable
from crmt.robustness.attacks import (
    FGM,
    L2PGD,
    PartialModel,
    PixelRanges,
    clean_pass,
    missing_modality,
    rescaled,
)
from crmt.robustness.audit import audit_radii
from crmt.robustness.certificates import LipschitzEstimator, sound_pair_lipschitz
from crmt.robustness.certify import certified_radius, unimodal_radius
from crmt.robustness.modes import eval_mode, float32_math
from crmt.robustness.results import (
    AccuracyCurves,
    AuditCounts,
    Certificate,
    EtaRatio,
    RadiusSummary,
    RobustnessMetrics,
    SmoothedCertificate,
)
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import JOINT_SCOPE, SmoothedCertificates, SmoothingCertifier
from crmt.robustness.threats import Scope, Threat

ReduceMax = Callable[[torch.Tensor], torch.Tensor]


class _Attack(NamedTuple):
    """One attack of a batch: the ``attacked`` modalities of the samples ``rows`` (B,) bool, within
    l2 budget ``eps``, from ``start`` (one full-size tensor per modality) or the clean inputs."""

    attacked: Sequence[int]
    rows: torch.Tensor
    eps: float
    start: Sequence[torch.Tensor] | None = None


class _Outcome(NamedTuple):
    """An attack's (B,) correctness (False outside its rows) and full-size adversarial inputs
    (the clean inputs outside its rows)."""

    correct: torch.Tensor
    adversarial: list[torch.Tensor]


class _BatchAttacks:
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
        self.model, self.settings, self.pixel_ranges, self.generator = model, settings, pixel_ranges, generator
        clean = estimator.clean_pass(inputs, labels) if estimator is not None else clean_pass(model, inputs, labels)
        self.logits, self.gradients, self.features = clean
        self.inputs = [x.clone() for x in inputs]
        self.labels = labels.clone()
        self.clean = self.logits.argmax(dim=1) == self.labels

    def run(self, attack: L2PGD, attacks: Sequence[_Attack]) -> list[_Outcome]:
        """Run ``attack``'s steps (budgets and modalities are the attacks' own) on all ``attacks``
        at once. Attacks from the clean inputs take their first step along the clean gradient;
        all or none of them may have a start."""
        if len({a.start is None for a in attacks}) > 1:
            raise ValueError("stacked attacks must all continue from a start, or none")
        index = [a.rows.nonzero().squeeze(1) for a in attacks]
        modalities = range(len(self.inputs))
        clean = [torch.cat([x[i] for i in index]) for x in self.inputs]
        mask = torch.cat([self._mask(a.attacked, len(i)) for a, i in zip(attacks, index, strict=True)])
        eps = torch.cat([torch.full((len(i),), float(a.eps), dtype=clean[0].dtype, device=clean[0].device) for a, i in zip(attacks, index, strict=True)])
        labels = torch.cat([self.labels[i] for i in index])
        features = [torch.cat([f[i] for i in index]) for f in self.features]
        start = None
        if attacks[0].start is not None:
            start = [torch.cat([a.start[m][i] for a, i in zip(attacks, index, strict=True)]) for m in modalities]
        adversarial, correct = clean, labels.new_zeros(0, dtype=torch.bool)
        if labels.shape[0]:
            adversarial = attack(
                self.model, clean, labels, self.pixel_ranges, eps=eps, attacked=mask, start=start, features=features,
                clean_gradients=None if start is not None else [torch.cat([g[i] for i in index]) for g in self.gradients],
                generator=self.generator,
            )
            with torch.no_grad(), eval_mode(self.model):
                correct = PartialModel(self.model, adversarial, mask, features).logits(adversarial).argmax(dim=1) == labels
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
            outcomes.append(_Outcome(still, full))
        return outcomes

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

    def _mask(self, attacked: Sequence[int], rows: int) -> torch.Tensor:
        mask = torch.zeros(rows, len(self.inputs), dtype=torch.bool, device=self.clean.device)
        mask[:, list(attacked)] = True
        return mask

    def rescaled(self, attacked: Sequence[int], adversarial: Sequence[torch.Tensor], radius: float) -> list[torch.Tensor]:
        """Full-size inputs whose attacked modalities carry ``adversarial``'s perturbation rescaled to ``radius``."""
        budget = torch.full(self.clean.shape, radius, dtype=self.inputs[0].dtype, device=self.clean.device)
        moved = rescaled([self.inputs[m] for m in attacked], [adversarial[m] for m in attacked], budget)
        full = list(self.inputs)
        for m, x in zip(attacked, moved, strict=True):
            full[m] = x
        return full

    def curves(self, tables: Sequence[tuple[Sequence[int], float, _Outcome]]) -> list[torch.Tensor]:
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
        attack = self.settings.pgd(1.0, steps=self.settings.curve_steps)
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

    def attack(self, level: int, batch: _BatchAttacks) -> _Attack:
        rows = self.correct if self.upward else batch.clean & ~self.correct
        radius = self.radii[level]
        return _Attack(self.attacked, rows, radius, batch.rescaled(self.attacked, self.adversarial, radius))

    def update(self, outcome: _Outcome) -> torch.Tensor:
        self.correct = self.correct & outcome.correct if self.upward else self.correct | outcome.correct
        self.adversarial = outcome.adversarial
        return self.correct


class BatchRecords(NamedTuple):
    """Per-sample outcomes of one batch: ``labels`` (B,), clean ``logits`` (B, K), ``correct`` (B,) bool
    per threat in the column order of the paper's Table 2 (True where the attacked sample is still
    classified correctly), and ``curves`` (B, R) bool per scope, the same over ``curve_radii``."""

    labels: torch.Tensor
    logits: torch.Tensor
    correct: dict[Threat, torch.Tensor]
    curves: dict[Scope, torch.Tensor]


class BatchEvaluation(NamedTuple):
    """What :func:`evaluate_batch` returns: the per-sample ``records`` and ``adversarial``, the
    multi-modal table PGD's examples (one (B, ...) tensor per modality; the clean inputs where a
    sample was not attacked), from which the radius audit starts."""

    records: BatchRecords
    adversarial: list[torch.Tensor]


def evaluate_batch(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    settings: RobustnessSettings,
    pixel_ranges: PixelRanges | None = None,
    generator: torch.Generator | None = None,
    estimator: LipschitzEstimator | None = None,
) -> BatchEvaluation:
    """Every attack of the table and the curves on one batch; the batch is folded into
    ``estimator`` too, sharing its clean pass.

    Runs outside inference mode (Lightning evaluates under it), so that every tensor made here
    can be updated in place and differentiated, and in float32 (autocast off).
    """
    with torch.inference_mode(False), float32_math():
        batch = _BatchAttacks(model, inputs, labels, settings, pixel_ranges, generator, estimator)
        modalities = list(model.modalities)
        scopes = Scope.every(modalities)
        tables = [([modalities.index(name) for name in scope.modalities], settings.budget(scope)) for scope in scopes]
        clean_attacks = [_Attack(attacked, batch.clean, eps) for attacked, eps in tables]
        fgm = batch.run(FGM(), clean_attacks)
        pgd = batch.run(settings.pgd(settings.multimodal_eps), clean_attacks)
        missing = batch.missing()
        curves = batch.curves([(attacked, eps, outcome) for (attacked, eps), outcome in zip(tables, pgd, strict=True)])
        correct_by_kind = {
            "fgm": {scope: outcome.correct for scope, outcome in zip(scopes, fgm, strict=True)},
            "pgd": {scope: outcome.correct for scope, outcome in zip(scopes, pgd, strict=True)},
            "missing": dict(zip(scopes[1:], missing, strict=True)),
        }
        correct = {
            threat: batch.clean if threat.kind == "clean" else correct_by_kind[threat.kind][threat.scope]
            for threat in settings.threats(modalities)
        }
        records = BatchRecords(batch.labels, batch.logits, correct, dict(zip(scopes, curves, strict=True)))
        return BatchEvaluation(records, pgd[0].adversarial)


EVALUATED_LIPSCHITZ_SOURCE = "estimated (max input-gradient norms over the evaluated samples)"
MODEL_LIPSCHITZ_SOURCE = "estimated (the model's own tau~, max over the training set, as in the paper)"
SOUND_LIPSCHITZ_SOURCE = "sound upper bound"


@dataclass
class CertifiedRadii:
    """Every sample's certified radius (N,) per scope from one pair Lipschitz table (M, K, K):
    the multi-modal radius (Proposition 3.4) and each modality's uni-modal radius (method.md §1-§2);
    ``lipschitz`` says where the table's constants come from."""

    lipschitz: str
    pair_lipschitz: torch.Tensor
    radii: dict[Scope, torch.Tensor]

    @classmethod
    def of(
        cls, lipschitz: str, pair_lipschitz: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, modalities: Sequence[str]
    ) -> CertifiedRadii:
        """The radii of samples with clean ``logits`` (N, K) and ``labels`` (N,); 0 where misclassified."""
        table = pair_lipschitz.to(logits.device)
        radii = {
            scope: certified_radius(logits, labels, table) if scope.multimodal
            else unimodal_radius(logits, labels, table, list(modalities).index(scope.modalities[0]))
            for scope in Scope.every(modalities)
        }
        return cls(lipschitz, pair_lipschitz, radii)

    @property
    def multimodal(self) -> torch.Tensor:
        """The multi-modal radii (N,)."""
        return next(radius for scope, radius in self.radii.items() if scope.multimodal)

    def summary(self, correct: torch.Tensor, radius_grid: Sequence[float]) -> Certificate:
        """Mean, median and certified accuracy at ``radius_grid`` per scope; ``correct`` (N,) the clean correctness."""
        radii = {scope: RadiusSummary.of(radius, correct, radius_grid) for scope, radius in self.radii.items()}
        return Certificate(self.lipschitz, list(radius_grid), radii)


@dataclass
class RobustnessResults:
    """Gathered per-sample records, the certificates and the audit of one evaluation.

    Attributes:
        modalities: the model's modality names, in its order.
        settings: what was evaluated.
        labels / logits / index: (N,), clean (N, K), dataset indices (N,) or ``None`` if unknown.
        correct: (N,) bool per threat, in the column order of the paper's Table 2.
        curves: (N, R) bool per scope: still correct under l2-PGD at each of ``settings.curve_radii``.
        certified: radii of the common protocol (the table estimated over the evaluated samples).
        certified_model: radii from the model's own table (CRMT's tau~), when it has one.
        certified_sound: radii from sound Lipschitz upper bounds.
        sound_note: why there are no sound radii, when worth saying.
        audit: the radius audit of ``certified`` (and of ``certified_sound`` with ``audit_sound``).
        smoothed: randomized-smoothing certificates of the certified samples per scope (the
            multi-modal scope: noise on every modality), with ``settings.smoothing``.
    """

    modalities: list[str]
    settings: RobustnessSettings
    labels: torch.Tensor
    logits: torch.Tensor
    correct: dict[Threat, torch.Tensor]
    curves: dict[Scope, torch.Tensor]
    index: torch.Tensor | None = None
    certified: CertifiedRadii | None = None
    certified_model: CertifiedRadii | None = None
    certified_sound: CertifiedRadii | None = None
    sound_note: str = ""
    audit: AuditCounts | None = None
    smoothed: dict[Scope, SmoothedCertificates] | None = None

    @property
    def samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def clean(self) -> torch.Tensor:
        """(N,) bool: classified correctly without attack."""
        return self.correct[Threat("clean")]

    def accuracy(self, threat: Threat) -> float:
        """Fraction of the samples still classified correctly under ``threat`` (NaN without samples)."""
        return self.correct[threat].float().mean().item() if self.samples else float("nan")

    def curve_accuracy(self) -> dict[Scope, list[float]]:
        """Per scope: the accuracy at radius 0 (clean) and at each curve radius."""
        clean = self.accuracy(Threat("clean"))
        return {scope: [clean, *curve.float().mean(dim=0).tolist()] for scope, curve in self.curves.items()}

    def eta_ratio(self, numerator: str | int = 0, denominator: str | int = 1) -> torch.Tensor | None:
        """eta^(numerator) / eta^(denominator) per class pair (K, K) from the common protocol's table,
        NaN on the diagonal (method.md §1, Figure 3); modalities by name or index, any ordered pair
        of distinct modalities. ``None`` when not certified."""
        if self.certified is None:
            return None
        top, bottom = self._modality_index(numerator), self._modality_index(denominator)
        if top == bottom:
            raise ValueError(f"an eta ratio compares two different modalities, got {numerator!r} over {denominator!r}")
        table = self.certified.pair_lipschitz
        ratio = table[top] / table[bottom].clamp_min(1e-12)
        return ratio.fill_diagonal_(float("nan"))

    def _modality_index(self, modality: str | int) -> int:
        if isinstance(modality, str):
            if modality not in self.modalities:
                raise ValueError(f"unknown modality {modality!r}; the model's are {self.modalities}")
            return self.modalities.index(modality)
        if not 0 <= modality < len(self.modalities):
            raise ValueError(f"modality index {modality} out of range for {len(self.modalities)} modalities")
        return modality

    def metrics(self) -> RobustnessMetrics:
        """Every number of the evaluation, typed (``to_json()`` gives ``metrics.json``'s layout); the
        eta ratio is the default pair, modality 0 over modality 1."""
        grid = self.settings.radius_grid
        own, sound = self.certified_model, self.certified_sound
        ratio = self.eta_ratio()
        return RobustnessMetrics(
            samples=self.samples,
            modalities=list(self.modalities),
            settings=self.settings,
            accuracy={threat: self.accuracy(threat) for threat in self.correct},
            curves=AccuracyCurves([0.0, *self.settings.curve_radii], self.curve_accuracy()),
            certified=self.certified.summary(self.clean, grid) if self.certified is not None else None,
            eta_ratio=EtaRatio.of(ratio, self.modalities[0], self.modalities[1]) if ratio is not None else None,
            audit=self.audit,
            certified_model=own.summary(self.clean, grid) if own is not None else None,
            certified_sound=sound.summary(self.clean, grid) if sound is not None else None,
            sound_note=self.sound_note,
            smoothed=self._smoothed_metrics(),
        )

    def _smoothed_metrics(self) -> dict[Scope, SmoothedCertificate] | None:
        """Per scope: the smoothing summary, certified accuracy at the scope's table budget."""
        if self.smoothed is None:
            return None
        return {
            scope: SmoothedCertificate.of(certificates, self.settings.smoothing, self.settings.budget(scope))
            for scope, certificates in self.smoothed.items()
        }

    def per_sample(self) -> dict:
        """Per-sample outcomes, JSON-ready, for paired statistics across models (``per_sample.json``):
        ``index`` (dataset index; the row number when unknown), ``label``, ``correct`` (0/1 per
        threat key, Table-2 order), when certified, ``radius`` (common protocol) and
        ``model_radius`` (multi-modal radii), and with smoothing ``smoothed``: per scope key, the
        certified rows' ``index`` (dataset index), smoothed ``prediction`` (-1: abstained) and ``radius``."""
        index = self.index if self.index is not None else torch.arange(self.samples)
        values: dict = {
            "index": index.tolist(),
            "label": self.labels.tolist(),
            "correct": {threat.key: outcome.int().tolist() for threat, outcome in self.correct.items()},
        }
        for key, certificate in (("radius", self.certified), ("model_radius", self.certified_model)):
            if certificate is not None:
                values[key] = certificate.multimodal.float().tolist()
        if self.smoothed is not None:
            values["smoothed"] = {
                scope.key: {"index": c.index.tolist(), "prediction": c.prediction.tolist(), "radius": c.radius.tolist()}
                for scope, c in self.smoothed.items()
            }
        return values


class _AuditChunk(NamedTuple):
    """Stored samples of one batch for the radius audit: clean ``inputs``, ``labels``, clean
    ``logits`` and ``start``, the multi-modal table PGD's examples."""

    inputs: list[torch.Tensor]
    labels: torch.Tensor
    logits: torch.Tensor
    start: list[torch.Tensor]


class RobustnessEvaluator:
    """Accumulates :func:`evaluate_batch` records and Lipschitz estimates; ``finalize`` certifies and audits.

    Every model's radii (``certified``) come from one protocol, so that they compare across
    strategies: the pair Lipschitz table estimated over the evaluated samples themselves. A
    model with a table of its own (CRMT after its phase switch: tau~ over the training set, as
    in the paper) also gets ``certified_model`` from it, reported beside and labelled.

    With ``settings.smoothing``, every model (certifiable or not) is also certified by randomized
    smoothing: the samples' noise is seeded by their dataset index, the running row number of this
    rank when the batches carry none; ``dataset_size`` (the test split's) spreads the certified
    samples evenly over it.
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
        self.seen = 0  # samples evaluated on this rank

    @property
    def audit_count(self) -> int:
        return sum(int(chunk.labels.shape[0]) for chunk in self.audit_chunks)

    def update(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Evaluate one batch (inputs in the model's modality order, labels (B,), dataset indices (B,) if known)."""
        records, adversarial = evaluate_batch(
            self.model, inputs, labels, self.settings, self.pixel_ranges, self.generator, self.estimator
        )
        self.batches.append(BatchRecords(
            records.labels.detach(), records.logits.detach(),
            {threat: value.detach() for threat, value in records.correct.items()},
            {scope: value.detach() for scope, value in records.curves.items()},
        ))
        if index is not None:
            self.indices.append(index.detach().clone())
        if self.smoother is not None:
            rows = index if index is not None else torch.arange(self.seen, self.seen + labels.shape[0])
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

    def finalize(self, all_gather: AllGather | None = None, reduce_max: ReduceMax | None = None) -> RobustnessResults:
        """Gather every rank's records, certify and audit. Every rank must call it (collectives)."""
        if not self.batches:
            raise ValueError("no batch was evaluated")

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
            results.certified_model = CertifiedRadii.of(MODEL_LIPSCHITZ_SOURCE, known, logits, labels, modalities)
        results.audit = self._audit(table, all_gather)
        if self.settings.sound_certificate:
            try:
                sound = sound_pair_lipschitz(model)
            except NotImplementedError as error:
                results.sound_note = f"no sound bound: {error}"
            else:
                results.certified_sound = CertifiedRadii.of(SOUND_LIPSCHITZ_SOURCE, sound, logits, labels, modalities)
                if self.settings.audit_sound:
                    results.audit = replace(results.audit, sound=self._audit(sound, all_gather))
        return results

    def _smoothed(self, all_gather: AllGather | None) -> dict[Scope, SmoothedCertificates] | None:
        """Every rank's smoothing certificates, keyed by scope ("joint": the multi-modal scope)."""
        if self.smoother is None:
            return None
        modalities = list(self.model.modalities)
        scopes = {JOINT_SCOPE: Scope(tuple(modalities)), **{name: Scope((name,)) for name in modalities}}
        return {scopes[name]: certificates for name, certificates in self.smoother.finalize(all_gather).items()}

    def _audit(self, table: torch.Tensor, all_gather: AllGather | None) -> AuditCounts:
        """Attack this rank's stored samples just inside their radii; counts summed over ranks."""
        eligible_count = violated_count = 0
        for inputs, labels, logits, start in self.audit_chunks:
            radius = certified_radius(logits, labels, table.to(logits.device))
            eligible, violated = audit_radii(
                self.model, inputs, labels, radius, self.pixel_ranges,
                steps=self.settings.audit_steps, fraction=self.settings.audit_fraction, start=start,
            )
            eligible_count += int(eligible.sum())
            violated_count += int(violated.sum())
        counts = torch.tensor([eligible_count, violated_count, self.audit_count])
        if all_gather is not None:
            counts = all_gather(counts.to(self.model.device)).reshape(-1, 3).sum(dim=0).cpu()
        eligible_total, violated_total, attacked = (int(c) for c in counts)
        return AuditCounts(attacked=attacked, eligible=eligible_total, violations=violated_total)
