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

Only correctly classified samples are attacked. Records (per sample): ``label``, ``logits``
(K,), ``index`` (the dataset index, when the batches carry one), and one bool per attack, True where the attacked sample is still classified correctly: ``clean``, ``fgm``, ``pgd`` (multi-modal),
``fgm_<m>``, ``pgd_<m>`` (uni-modal on modality <m>), ``missing_<m>``, and the accuracy
curves ``curve_multimodal`` / ``curve_<m>`` (R,) over ``curve_radii``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from crmt.distributed import AllGather, gather_rows
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
from crmt.robustness.certify import certified_accuracy, certified_radius, unimodal_radius
from crmt.robustness.modes import eval_mode

ReduceMax = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RobustnessSettings:
    """What to evaluate; defaults follow the paper's protocol (method.md §5, baselines.md §10).

    Attributes:
        multimodal_eps: joint l2 budget of the multi-modal FGM and PGD (0.5).
        unimodal_eps: l2 budget of the uni-modal FGM and PGD (1.0).
        steps / step_fraction / random_start: PGD settings (4 steps of eps / 3, no random start).
        missing_fill: value of a missing modality's normalised input (0: the data mean).
        curve_radii: increasing budgets of the accuracy-vs-radius curves (PGD continued across the
            radii from the table's attack, multi-modal and per modality; see ``_BatchAttacks.curves``).
        curve_steps: PGD steps at each curve radius other than the table's budget.
        certify: compute estimated certified radii (needs a certifiable model).
        sound_certificate: also compute radii from sound Lipschitz upper bounds.
        audit_samples: how many samples (per rank) the radius audit attacks; 0 turns it off.
        audit_steps / audit_fraction: PGD steps and budget (fraction of the radius) of the audit,
            which starts from the multi-modal table attack's example rescaled to that budget.
        audit_sound: audit the sound radii too (they must show no violation).
        radius_grid: radii at which certified accuracy is reported.
        seed: seeds random starts.
    """

    multimodal_eps: float = 0.5
    unimodal_eps: float = 1.0
    steps: int = 4
    step_fraction: float = 1 / 3
    random_start: bool = False
    missing_fill: float = 0.0
    curve_radii: tuple[float, ...] = (0.5, 1.0, 2.0)
    curve_steps: int = 1
    certify: bool = True
    sound_certificate: bool = True
    audit_samples: int = 256
    audit_steps: int = 5
    audit_fraction: float = 0.99
    audit_sound: bool = False
    radius_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("multimodal_eps", "unimodal_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if min(self.steps, self.audit_steps, self.curve_steps) < 1:
            raise ValueError(
                f"steps, audit_steps and curve_steps must be >= 1, got {self.steps}, {self.audit_steps}, {self.curve_steps}"
            )
        if any(r <= 0 for r in self.curve_radii) or list(self.curve_radii) != sorted(set(self.curve_radii)):
            raise ValueError(f"curve_radii must be positive and increasing, got {self.curve_radii}")
        if self.audit_samples < 0:
            raise ValueError(f"audit_samples must be >= 0, got {self.audit_samples}")

    def pgd(self, eps: float, modalities: Sequence[int] | None = None, steps: int | None = None) -> L2PGD:
        return L2PGD(eps, steps or self.steps, self.step_fraction, self.random_start, modalities)


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

    def __init__(self, model, inputs, labels, settings, pixel_ranges, generator, estimator) -> None:
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


class BatchEvaluation(NamedTuple):
    """What :func:`evaluate_batch` returns: the per-sample ``records`` (see the module docstring)
    and ``adversarial``, the multi-modal table PGD's examples (one (B, ...) tensor per modality;
    the clean inputs where a sample was not attacked), from which the radius audit starts."""

    records: dict[str, torch.Tensor]
    adversarial: list[torch.Tensor]


def evaluate_batch(
    model,
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
    can be updated in place and differentiated.
    """
    with torch.inference_mode(False):
        return _evaluate_batch(model, inputs, labels, settings, pixel_ranges, generator, estimator)


def _evaluate_batch(model, inputs, labels, settings, pixel_ranges, generator, estimator) -> BatchEvaluation:
    batch = _BatchAttacks(model, inputs, labels, settings, pixel_ranges, generator, estimator)
    suffixes = ["", *(f"_{name}" for name in model.modalities)]
    tables = [(list(range(len(inputs))), settings.multimodal_eps)] + [([m], settings.unimodal_eps) for m in range(len(inputs))]
    clean_attacks = [_Attack(attacked, batch.clean, eps) for attacked, eps in tables]
    fgm = batch.run(FGM(), clean_attacks)
    pgd = batch.run(settings.pgd(settings.multimodal_eps), clean_attacks)
    missing = batch.missing()
    curves = batch.curves([(attacked, eps, outcome) for (attacked, eps), outcome in zip(tables, pgd, strict=True)])
    records = {"label": batch.labels, "logits": batch.logits, "clean": batch.clean}
    for suffix, f, p, c in zip(suffixes, fgm, pgd, curves, strict=True):
        records[f"fgm{suffix}"], records[f"pgd{suffix}"] = f.correct, p.correct
        records[f"curve{suffix or '_multimodal'}"] = c
    for m, name in enumerate(model.modalities):
        records[f"missing_{name}"] = missing[m]
    return BatchEvaluation(records, pgd[0].adversarial)


@dataclass
class RobustnessResults:
    """Gathered per-sample records, the certificates and the audit of one evaluation."""

    modalities: list[str]
    settings: RobustnessSettings
    records: dict[str, torch.Tensor]
    pair_lipschitz: torch.Tensor | None = None
    lipschitz_source: str = "not certified"
    model_pair_lipschitz: torch.Tensor | None = None
    sound_pair_lipschitz: torch.Tensor | None = None
    sound_note: str = ""
    audit: dict[str, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.records["label"].shape[0])

    def accuracy(self, key: str) -> float:
        return self.records[key].float().mean().item() if self.samples else float("nan")

    def attack_keys(self) -> list[str]:
        """The Table-2 columns in order: clean, multi-modal FGM/PGD, uni-modal FGM/PGD, missing."""
        keys = ["clean", "fgm", "pgd"]
        keys += [f"{attack}_{name}" for name in self.modalities for attack in ("fgm", "pgd")]
        keys += [f"missing_{name}" for name in self.modalities]
        return keys

    def curves(self) -> dict[str, list[float]]:
        """Accuracy at radius 0 (clean) and at each curve radius: 'multimodal' and per modality."""
        clean = self.accuracy("clean")
        return {
            key: [clean, *self.records[f"curve_{key}"].float().mean(dim=0).tolist()]
            for key in ("multimodal", *self.modalities)
        }

    def eta_ratio(self) -> torch.Tensor | None:
        """eta^(m0) / eta^(m1) per class pair (K, K), NaN on the diagonal (method.md §1, Figure 3)."""
        if self.pair_lipschitz is None:
            return None
        ratio = self.pair_lipschitz[0] / self.pair_lipschitz[1].clamp_min(1e-12)
        return ratio.fill_diagonal_(float("nan"))

    def metrics(self) -> dict:
        """Every number of the evaluation, JSON-ready."""
        metrics: dict = {
            "samples": self.samples,
            "modalities": self.modalities,
            "settings": asdict(self.settings),
            "accuracy": {key: self.accuracy(key) for key in self.attack_keys()},
            "curves": {"radii": [0.0, *self.settings.curve_radii], **self.curves()},
        }
        if "radius" in self.records:
            metrics["certified"] = self._certificate_metrics("radius", self.lipschitz_source)
            ratio = self.eta_ratio()
            off_diagonal = ratio[~torch.isnan(ratio)]
            metrics["eta_ratio"] = {
                "pair": f"{self.modalities[0]}/{self.modalities[1]}",
                "matrix": [[None if v != v else v for v in row] for row in ratio.tolist()],
                "mean_log_ratio": off_diagonal.clamp_min(1e-12).log().mean().item() if off_diagonal.numel() else None,
            }
            metrics["audit"] = dict(self.audit)
        if "model_radius" in self.records:
            metrics["certified_model"] = self._certificate_metrics("model_radius", MODEL_LIPSCHITZ_SOURCE)
        if "sound_radius" in self.records:
            metrics["certified_sound"] = self._certificate_metrics("sound_radius", "sound upper bound")
        elif self.sound_note:
            metrics["certified_sound"] = {"note": self.sound_note}
        return metrics

    def per_sample(self) -> dict:
        """Per-sample outcomes, JSON-ready, for paired statistics across models (``per_sample.json``):
        ``index`` (dataset index; the row number when unknown), ``label``, ``correct`` (0/1 per
        Table-2 column) and, when certified, ``radius`` (common protocol) and ``model_radius``."""
        index = self.records.get("index", torch.arange(self.samples))
        values: dict = {
            "index": index.tolist(),
            "label": self.records["label"].tolist(),
            "correct": {key: self.records[key].int().tolist() for key in self.attack_keys()},
        }
        for key in ("radius", "model_radius"):
            if key in self.records:
                values[key] = self.records[key].float().tolist()
        return values

    def _certificate_metrics(self, prefix: str, source: str) -> dict:
        correct = self.records["clean"]
        grid = torch.tensor(self.settings.radius_grid)
        result: dict = {"lipschitz": source, "radius_grid": list(self.settings.radius_grid)}
        for key, suffix in [("multimodal", ""), *[(name, f"_{name}") for name in self.modalities]]:
            radius = self.records[f"{prefix}{suffix}"].float()
            result[key] = {
                "mean": radius.mean().item(),
                "median": radius.median().item(),
                "certified_accuracy": certified_accuracy(radius.cpu(), correct.cpu(), grid).tolist(),
            }
        return result


class _AuditChunk(NamedTuple):
    """Stored samples of one batch for the radius audit: clean ``inputs``, ``labels``, clean
    ``logits`` and ``start``, the multi-modal table PGD's examples."""

    inputs: list[torch.Tensor]
    labels: torch.Tensor
    logits: torch.Tensor
    start: list[torch.Tensor]


EVALUATED_LIPSCHITZ_SOURCE = "estimated (max input-gradient norms over the evaluated samples)"
MODEL_LIPSCHITZ_SOURCE = "estimated (the model's own tau~, max over the training set, as in the paper)"


class RobustnessEvaluator:
    """Accumulates :func:`evaluate_batch` records and Lipschitz estimates; ``finalize`` certifies and audits.

    Every model's radii (``radius``) come from one protocol, so that they compare across
    strategies: the pair Lipschitz table estimated over the evaluated samples themselves. A
    model with a table of its own (CRMT after its phase switch: tau~ over the training set, as
    in the paper) also gets ``model_radius`` from it, reported beside and labelled.
    """

    def __init__(self, model, settings: RobustnessSettings, pixel_ranges: PixelRanges | None = None) -> None:
        self.model = model
        self.settings = settings
        self.pixel_ranges = pixel_ranges
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.chunks: dict[str, list[torch.Tensor]] = {}
        self.audit_chunks: list[_AuditChunk] = []
        self.estimator: LipschitzEstimator | None = None
        self.certifying = settings.certify and getattr(model, "certifiable", False)
        if self.certifying:
            self.estimator = LipschitzEstimator(model)

    @property
    def audit_count(self) -> int:
        return sum(int(chunk.labels.shape[0]) for chunk in self.audit_chunks)

    def update(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Evaluate one batch (inputs in the model's modality order, labels (B,), dataset indices (B,) if known)."""
        records, adversarial = evaluate_batch(
            self.model, inputs, labels, self.settings, self.pixel_ranges, self.generator, self.estimator
        )
        if index is not None:
            records["index"] = index.detach().clone()
        for key, value in records.items():
            self.chunks.setdefault(key, []).append(value.detach())
        room = self.settings.audit_samples - self.audit_count
        if self.certifying and room > 0:
            with torch.inference_mode(False):
                self.audit_chunks.append(
                    _AuditChunk(
                        [x[:room].detach().clone() for x in inputs],
                        labels[:room].detach().clone(),
                        records["logits"][:room],
                        [x[:room] for x in adversarial],
                    )
                )

    def finalize(self, all_gather: AllGather | None = None, reduce_max: ReduceMax | None = None) -> RobustnessResults:
        """Gather every rank's records, certify and audit. Every rank must call it (collectives)."""
        records = {key: gather_rows(all_gather, torch.cat(values)) for key, values in self.chunks.items()}
        results = RobustnessResults(list(self.model.modalities), self.settings, records)
        if not self.certifying:
            results.sound_note = "the model is not certifiable" if self.settings.certify else ""
            return results
        results.pair_lipschitz = self.estimator.pair_lipschitz(reduce_max)
        results.lipschitz_source = EVALUATED_LIPSCHITZ_SOURCE
        self._add_radii(results, "radius", results.pair_lipschitz)
        known = self.model.known_pair_lipschitz()
        if known is not None:
            results.model_pair_lipschitz = known
            self._add_radii(results, "model_radius", known)
        results.audit = self._audit(results.pair_lipschitz, all_gather)
        if self.settings.sound_certificate:
            try:
                results.sound_pair_lipschitz = sound_pair_lipschitz(self.model)
            except NotImplementedError as error:
                results.sound_note = f"no sound bound: {error}"
            else:
                self._add_radii(results, "sound_radius", results.sound_pair_lipschitz)
                if self.settings.audit_sound:
                    sound_audit = self._audit(results.sound_pair_lipschitz, all_gather)
                    results.audit.update({f"sound_{key}": value for key, value in sound_audit.items()})
        return results

    @staticmethod
    def _add_radii(results: RobustnessResults, prefix: str, table: torch.Tensor) -> None:
        logits, labels = results.records["logits"], results.records["label"]
        table = table.to(logits.device)
        results.records[prefix] = certified_radius(logits, labels, table)
        for m, name in enumerate(results.modalities):
            results.records[f"{prefix}_{name}"] = unimodal_radius(logits, labels, table, m)

    def _audit(self, table: torch.Tensor, all_gather: AllGather | None) -> dict[str, int]:
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
        return {
            "attacked": attacked,
            "eligible": eligible_total,
            "violations": violated_total,
            "violation_rate": violated_total / eligible_total if eligible_total else 0.0,
        }
