"""Every attack and certificate of the paper's protocol over a data set, as per-sample records.

:class:`RobustnessEvaluator` is fed batches (``update``) and then ``finalize``-d into
:class:`RobustnessResults`; both callbacks (the periodic monitor and the end-of-run report)
use it. Per batch it computes the clean logits and the loss gradient of every input once,
and reuses them: they give the clean accuracy, every FGM (multi-modal and uni-modal: a
modality's FGM direction is its part of the joint gradient) and the first step of every PGD
without random start; when the Lipschitz table is estimated over the evaluated samples, the
estimator's score gradients give them without a backward pass of their own. Uni-modal attacks
run only the attacked encoder; the other modalities' features are computed once. The curves
continue from the table's attacks (see ``_BatchAttacks.curve``) and the radius audit from the
multi-modal PGD's examples.

Only correctly classified samples are attacked. Records (per sample): ``label``, ``logits``
(K,), and one bool per attack, True where the attacked sample is still classified correctly: ``clean``, ``fgm``, ``pgd`` (multi-modal),
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
            radii from the table's attack, multi-modal and per modality; see ``_BatchAttacks.curve``).
        curve_steps: PGD steps at each curve radius other than the table's budget.
        certify: compute estimated certified radii (needs a certifiable model).
        sound_certificate: also compute radii from sound Lipschitz upper bounds.
        audit_samples: how many samples (per rank) the radius audit attacks; 0 turns it off.
        audit_steps / audit_fraction: PGD steps and budget (fraction of the radius) of the audit,
            which starts from the multi-modal table attack's example projected into that budget.
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
    curve_steps: int = 2
    certify: bool = True
    sound_certificate: bool = True
    audit_samples: int = 256
    audit_steps: int = 6
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


class _BatchAttacks:
    """The attacks of one batch, sharing its clean logits, ascent directions and features.

    Only samples that are classified correctly are attacked (a misclassified sample counts as
    broken under every attack), as robust-accuracy evaluations usually do.
    """

    def __init__(self, model, inputs, labels, settings, pixel_ranges, generator, estimator) -> None:
        self.model, self.settings, self.pixel_ranges, self.generator = model, settings, pixel_ranges, generator
        clean = estimator.clean_pass(inputs, labels) if estimator is not None else clean_pass(model, inputs, labels)
        self.logits, self.gradients, self.features = clean
        self.inputs = [x.clone() for x in inputs]
        self.labels = labels.clone()
        self.clean = self.logits.argmax(dim=1) == self.labels

    def still_correct(self, adversarial: Sequence[torch.Tensor], attacked: Sequence[int], rows: torch.Tensor) -> torch.Tensor:
        """(B,) correctness of ``adversarial`` (full inputs), evaluated on ``rows`` only (False elsewhere)."""
        correct = torch.zeros_like(self.clean)
        if bool(rows.any()):
            with torch.inference_mode(False), torch.no_grad(), eval_mode(self.model):
                subset = [x[rows] for x in adversarial]
                partial = PartialModel(self.model, subset, attacked, [f[rows] for f in self.features])
                correct[rows] = partial.logits([subset[m] for m in attacked]).argmax(dim=1) == self.labels[rows]
        return correct

    def run(
        self,
        attack: L2PGD,
        attacked: Sequence[int],
        rows: torch.Tensor,
        start: Sequence[torch.Tensor] | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Attack ``rows`` (from the clean inputs, or from ``start`` full-size adversarial inputs of the
        attacked modalities; with the attack's budget or a (B,) ``eps``); returns (B,) correctness
        and the full-size adversarial inputs."""
        adversarial = [x.clone() for x in self.inputs]
        if bool(rows.any()):
            subset = [x[rows] for x in self.inputs]
            result = attack(
                self.model, subset, self.labels[rows], self.pixel_ranges,
                eps=None if eps is None else eps[rows],
                clean_gradients=None if start is not None else [self.gradients[m][rows] for m in attacked],
                start=None if start is None else [s[rows] for s in start],
                features=[f[rows] for f in self.features],
                generator=self.generator,
            )
            for m in attacked:
                adversarial[m][rows] = result[m]
        return self.still_correct(adversarial, attacked, rows), adversarial

    def curve(self, attacked: Sequence[int], table_eps: float, table: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        """(B, R) correctness over ``curve_radii``: l2-PGD continued from the table's attack at ``table_eps``.

        Every curve radius other than the table's takes ``curve_steps`` steps from the adversarial
        perturbation of its neighbour on the table's side, rescaled to the new radius, so the
        whole curve costs a few steps on the samples whose outcome is still open:

        - above ``table_eps`` (increasing): only samples not broken at the next smaller radius are
          attacked;
        - below ``table_eps`` (decreasing): only samples broken at the next larger radius are
          attacked; a sample that withstood the larger ball counts as withstanding the smaller one.

        The two sides attack disjoint samples, so the i-th radius above and the i-th radius below
        the table's run as one attack with a budget per sample. Either way a sample broken at one
        radius is broken at every larger one; at the table's own budget the table's attack is reused.
        """
        radii = self.settings.curve_radii
        if not radii:
            return self.clean.new_zeros((self.clean.shape[0], 0))
        columns = {radius: table[0] for radius in radii if abs(radius - table_eps) < 1e-12}
        above = sorted(r for r in radii if r > table_eps)
        below = sorted((r for r in radii if r < table_eps), reverse=True)
        up_correct, down_correct = table[0], table[0]
        start = [table[1][m] for m in attacked]
        attack = self.settings.pgd(table_eps, attacked, self.settings.curve_steps)
        for level in range(max(len(above), len(below))):
            up_rows = up_correct if level < len(above) else torch.zeros_like(self.clean)
            down_rows = self.clean & ~down_correct if level < len(below) else torch.zeros_like(self.clean)
            eps = torch.zeros(self.clean.shape, dtype=self.inputs[0].dtype, device=self.clean.device)
            if level < len(above):
                eps[up_rows] = above[level]
            if level < len(below):
                eps[down_rows] = below[level]
            start = rescaled([self.inputs[m] for m in attacked], start, eps)
            result, adversarial = self.run(attack, attacked, up_rows | down_rows, start, eps)
            if level < len(above):
                up_correct = up_correct & result
                columns[above[level]] = up_correct
            if level < len(below):
                down_correct = down_correct | (down_rows & result)
                columns[below[level]] = down_correct
            start = [adversarial[m] for m in attacked]
        return torch.stack([columns[radius] for radius in radii], dim=1)


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
    rows = batch.clean
    everything = list(range(len(inputs)))
    records = {"label": batch.labels, "logits": batch.logits, "clean": batch.clean}
    records["fgm"], _ = batch.run(FGM(settings.multimodal_eps), everything, rows)
    multimodal = batch.run(settings.pgd(settings.multimodal_eps), everything, rows)
    records["pgd"] = multimodal[0]
    records["curve_multimodal"] = batch.curve(everything, settings.multimodal_eps, multimodal)
    for m, name in enumerate(model.modalities):
        records[f"fgm_{name}"], _ = batch.run(FGM(settings.unimodal_eps, [m]), [m], rows)
        pgd = batch.run(settings.pgd(settings.unimodal_eps, [m]), [m], rows)
        records[f"pgd_{name}"] = pgd[0]
        missing = missing_modality(batch.inputs, m, settings.missing_fill)
        records[f"missing_{name}"] = batch.still_correct(missing, [m], rows)
        records[f"curve_{name}"] = batch.curve([m], settings.unimodal_eps, pgd)
    return BatchEvaluation(records, multimodal[1])


@dataclass
class RobustnessResults:
    """Gathered per-sample records, the certificates and the audit of one evaluation."""

    modalities: list[str]
    settings: RobustnessSettings
    records: dict[str, torch.Tensor]
    pair_lipschitz: torch.Tensor | None = None
    lipschitz_source: str = "not certified"
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
        if "sound_radius" in self.records:
            metrics["certified_sound"] = self._certificate_metrics("sound_radius", "sound upper bound")
        elif self.sound_note:
            metrics["certified_sound"] = {"note": self.sound_note}
        return metrics

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


class RobustnessEvaluator:
    """Accumulates :func:`evaluate_batch` records and Lipschitz estimates; ``finalize`` certifies and audits.

    The pair Lipschitz table comes from the model when it has one (CRMT after its phase switch:
    tau~ over the training set, as in the paper) and is otherwise estimated over the evaluated
    samples themselves.
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
        if self.certifying and model.known_pair_lipschitz() is None:
            self.estimator = LipschitzEstimator(model)

    @property
    def audit_count(self) -> int:
        return sum(int(chunk.labels.shape[0]) for chunk in self.audit_chunks)

    def update(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        """Evaluate one batch (inputs in the model's modality order, labels (B,))."""
        records, adversarial = evaluate_batch(
            self.model, inputs, labels, self.settings, self.pixel_ranges, self.generator, self.estimator
        )
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
        known = self.model.known_pair_lipschitz()
        if known is not None:
            results.pair_lipschitz, results.lipschitz_source = known, "estimated (the model's tau~ from the training set)"
        else:
            results.pair_lipschitz = self.estimator.pair_lipschitz(reduce_max)
            results.lipschitz_source = "estimated (max input-gradient norms over the evaluated samples)"
        self._add_radii(results, "radius", results.pair_lipschitz)
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
