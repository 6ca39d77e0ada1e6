"""The numbers of one robustness evaluation, typed: what ``metrics.json`` holds and what reads it back.

:meth:`RobustnessResults.metrics <crmt.robustness.evaluation.RobustnessResults.metrics>` builds a
:class:`RobustnessMetrics` from the per-sample records; the report, the callbacks and the
multi-seed comparison read its fields. Each class has one ``to_json`` (its part of
``metrics.json``) and one ``from_json`` (its inverse); accuracies are keyed by
:class:`~crmt.robustness.threats.Threat`, curves and certificates (estimated radii, randomized
smoothing) by :class:`~crmt.robustness.threats.Scope`, and ``metrics.json`` lists the threats
(``{key, kind, attacked, budget}``) so that reading it back parses no names.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from crmt.robustness.certify import certified_accuracy
from crmt.robustness.sanity import SanityCheck
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import SmoothedCertificates, SmoothingSettings, max_certified_radius
from crmt.robustness.suite import AdaptiveSettings, SuiteSize
from crmt.robustness.threats import Scope, Threat


def _multimodal(by_scope: Mapping[Scope, object]):
    return next(value for scope, value in by_scope.items() if scope.multimodal)


@dataclass(frozen=True)
class SurvivalCurve:
    """The exact certified-accuracy curve of per-sample radii: acc(r) = the share of ALL samples that are
    correct with radius >= r, at ``radii`` [0, r_1, ..., r_J] (r_1 < ... < r_J the distinct radii of
    the correct samples). acc is left-continuous: ``accuracy[j]`` holds on (r_{j-1}, r_j], and acc is
    0 beyond r_J (matplotlib: ``step(radii, accuracy, where="pre")``)."""

    radii: list[float]
    accuracy: list[float]

    @classmethod
    def of(cls, radius: torch.Tensor, correct: torch.Tensor) -> SurvivalCurve:
        """From the radii (N,) and the correctness (N,) bool of the samples; ([0], [0]) without a correct one."""
        kept = radius[correct.to(radius.device)].double().sort().values.cpu()
        total = max(radius.numel(), 1)
        distinct = torch.unique(kept)
        at_least = kept.numel() - torch.searchsorted(kept, distinct)  # searchsorted counts the radii < r_j
        return cls([0.0, *distinct.tolist()], [kept.numel() / total, *(at_least.double() / total).tolist()])

    def at(self, radius: float) -> float:
        """acc(``radius``) for ``radius`` >= 0: ``accuracy[j]`` for the first r_j >= radius, 0 beyond r_J."""
        j = bisect_left(self.radii, radius)
        return self.accuracy[j] if j < len(self.radii) else 0.0

    def to_json(self) -> dict:
        return {"radii": list(self.radii), "accuracy": list(self.accuracy)}

    @classmethod
    def from_json(cls, data: Mapping) -> SurvivalCurve:
        return cls(list(data["radii"]), list(data["accuracy"]))


@dataclass(frozen=True)
class RadiusSummary:
    """Certified radii of one scope over the samples: mean, median, the certified accuracy (the
    fraction of samples correct with radius >= r) at each r of the certificate's radius grid, and
    the exact curve (``None`` in files written before it existed)."""

    mean: float
    median: float
    certified_accuracy: list[float]
    curve: SurvivalCurve | None = None

    @classmethod
    def of(cls, radius: torch.Tensor, correct: torch.Tensor, radius_grid: Sequence[float]) -> RadiusSummary:
        """From the radii (N,) and the clean correctness (N,) bool of the samples."""
        radius = radius.float()
        grid = torch.tensor(radius_grid)
        accuracy = certified_accuracy(radius.cpu(), correct.cpu(), grid).tolist()
        return cls(radius.mean().item(), radius.median().item(), accuracy, SurvivalCurve.of(radius, correct))

    def to_json(self) -> dict:
        curve = {} if self.curve is None else {"curve": self.curve.to_json()}
        return {"mean": self.mean, "median": self.median, "certified_accuracy": list(self.certified_accuracy), **curve}

    @classmethod
    def from_json(cls, data: Mapping) -> RadiusSummary:
        curve = SurvivalCurve.from_json(data["curve"]) if "curve" in data else None
        return cls(data["mean"], data["median"], list(data["certified_accuracy"]), curve)


@dataclass(frozen=True)
class Certificate:
    """Certified radii from one pair Lipschitz table: where its constants come from (``lipschitz``),
    the radii at which certified accuracy is reported, and a summary per scope (multi-modal radius,
    Proposition 3.4; each modality's uni-modal radius)."""

    lipschitz: str
    radius_grid: list[float]
    radii: dict[Scope, RadiusSummary]

    @property
    def multimodal(self) -> RadiusSummary:
        return _multimodal(self.radii)

    def to_json(self) -> dict:
        summaries = {scope.key: summary.to_json() for scope, summary in self.radii.items()}
        return {"lipschitz": self.lipschitz, "radius_grid": list(self.radius_grid), **summaries}

    @classmethod
    def from_json(cls, data: Mapping, modalities: Sequence[str]) -> Certificate:
        radii = {scope: RadiusSummary.from_json(data[scope.key]) for scope in Scope.every(modalities)}
        return cls(data["lipschitz"], list(data["radius_grid"]), radii)


@dataclass(frozen=True)
class EtaRatio:
    """eta^(numerator) / eta^(denominator) per class pair (y row, j column), the vulnerability of one
    modality against another's (method.md §1, the paper's Figure 3); ``None`` on the diagonal.
    ``mean_log_ratio``: the mean natural log of the off-diagonal ratios (> 0: the numerator's
    modality is the more vulnerable one), ``None`` without off-diagonal cells."""

    numerator: str
    denominator: str
    matrix: list[list[float | None]]
    mean_log_ratio: float | None

    @classmethod
    def of(cls, ratio: torch.Tensor, numerator: str, denominator: str) -> EtaRatio:
        """From the (K, K) ratio with NaN on the diagonal."""
        off_diagonal = ratio[~torch.isnan(ratio)]
        mean_log = off_diagonal.clamp_min(1e-12).log().mean().item() if off_diagonal.numel() else None
        matrix = [[None if v != v else v for v in row] for row in ratio.tolist()]
        return cls(numerator, denominator, matrix, mean_log)

    @property
    def pair(self) -> str:
        """``<numerator>/<denominator>``, as figures and tables label the ratio."""
        return f"{self.numerator}/{self.denominator}"

    def array(self) -> np.ndarray:
        """The (K, K) ratios, NaN on the diagonal."""
        return np.array([[np.nan if v is None else v for v in row] for row in self.matrix], dtype=float)

    def to_json(self) -> dict:
        return {
            "pair": self.pair,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "matrix": self.matrix,
            "mean_log_ratio": self.mean_log_ratio,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> EtaRatio:
        return cls(data["numerator"], data["denominator"], [list(row) for row in data["matrix"]], data["mean_log_ratio"])


@dataclass(frozen=True)
class AuditCounts:
    """The radius audit (:mod:`crmt.robustness.audit`), summed over ranks: samples ``attacked``, those
    ``eligible`` (positive radius), the ``violations`` among them by l2-PGD; ``adaptive_violations``: those
    by l2-PGD or the adaptive suite's gradient attacks (``None`` without them); ``sound``: the same for the
    sound radii when they were audited too."""

    attacked: int
    eligible: int
    violations: int
    sound: AuditCounts | None = None
    adaptive_violations: int | None = None

    @property
    def violation_rate(self) -> float:
        """violations / eligible (0 without eligible samples)."""
        return self.violations / self.eligible if self.eligible else 0.0

    @property
    def adaptive_violation_rate(self) -> float | None:
        """adaptive_violations / eligible (0 without eligible samples; ``None`` without the adaptive audit)."""
        if self.adaptive_violations is None:
            return None
        return self.adaptive_violations / self.eligible if self.eligible else 0.0

    def to_json(self) -> dict:
        """The counts, the adaptive audit's (when run) and the sound audit's under ``sound_``-prefixed keys."""
        counts = {"attacked": self.attacked, "eligible": self.eligible, "violations": self.violations,
                  "violation_rate": self.violation_rate}
        if self.adaptive_violations is not None:
            counts |= {"adaptive_violations": self.adaptive_violations, "adaptive_violation_rate": self.adaptive_violation_rate}
        sound = {} if self.sound is None else {f"sound_{key}": value for key, value in self.sound.to_json().items()}
        return {**counts, **sound}

    @classmethod
    def from_json(cls, data: Mapping) -> AuditCounts:
        sound = None
        if "sound_attacked" in data:
            sound = cls(data["sound_attacked"], data["sound_eligible"], data["sound_violations"],
                        adaptive_violations=data.get("sound_adaptive_violations"))
        return cls(data["attacked"], data["eligible"], data["violations"], sound, data.get("adaptive_violations"))


@dataclass(frozen=True)
class AdaptiveSummary:
    """The adaptive evaluation (:mod:`crmt.robustness.suite`): the suite's name and size, its attacks in
    the order they ran, per scope how many correctly classified samples each attack broke first and
    how many stood (``standing``: the suite broke none of them; the paper's FGM or PGD may have), and the
    sanity checks (:mod:`crmt.robustness.sanity`)."""

    suite: str
    size: SuiteSize
    attacks: list[str]
    broken_by: dict[Scope, dict[str, int]]
    checks: list[SanityCheck]

    @classmethod
    def of(cls, settings: AdaptiveSettings, attacks: Sequence[str], broken_by: Mapping[Scope, torch.Tensor],
           checks: Sequence[SanityCheck]) -> AdaptiveSummary:
        """From the gathered per-sample codes (N,) per scope: an attack's index, -1 standing, -2 not attacked."""
        counts = {
            scope: {**{name: int((codes == i).sum()) for i, name in enumerate(attacks)}, "standing": int((codes == -1).sum())}
            for scope, codes in broken_by.items()
        }
        return cls(settings.suite, settings.size, list(attacks), counts, list(checks))

    @property
    def raised(self) -> list[SanityCheck]:
        """The checks that are raised."""
        return [check for check in self.checks if check.raised]

    def to_json(self) -> dict:
        return {
            "suite": self.suite, "size": asdict(self.size), "attacks": list(self.attacks),
            "broken_by": {scope.key: dict(counts) for scope, counts in self.broken_by.items()},
            "checks": [check.to_json() for check in self.checks],
            "flags": [check.key for check in self.raised],
        }

    @classmethod
    def from_json(cls, data: Mapping, modalities: Sequence[str]) -> AdaptiveSummary:
        broken_by = {scope: dict(data["broken_by"][scope.key]) for scope in Scope.every(modalities)}
        return cls(data["suite"], SuiteSize(**data["size"]), list(data["attacks"]), broken_by,
                   [SanityCheck.from_json(check) for check in data["checks"]])


@dataclass(frozen=True)
class AccuracyCurves:
    """Accuracy under l2-PGD at each of ``radii`` (0 first: the clean accuracy), per scope (the
    paper's Figures 1, 4 and 5)."""

    radii: list[float]
    accuracy: dict[Scope, list[float]]

    @property
    def multimodal(self) -> list[float]:
        return _multimodal(self.accuracy)

    def to_json(self) -> dict:
        return {"radii": list(self.radii), **{scope.key: list(values) for scope, values in self.accuracy.items()}}

    @classmethod
    def from_json(cls, data: Mapping, modalities: Sequence[str]) -> AccuracyCurves:
        return cls(list(data["radii"]), {scope: list(data[scope.key]) for scope in Scope.every(modalities)})


@dataclass(frozen=True)
class SmoothedCertificate:
    """Randomized smoothing (Cohen et al., ICML 2019) of one scope: sound l2 certificates of the smoothed
    classifier (joint: noise on every modality; a modality: noise on it alone, the others clean).

    Attributes:
        sigma / n0 / n / alpha: the noise std and CERTIFY's selection draws, estimation draws and
            failure probability per certificate.
        certified: samples certified (all ranks; a subset of the evaluated ones when fewer).
        abstention_rate: share of them where CERTIFY abstained.
        budget: the l2 budget of the scope's table attacks.
        curve: the exact certified-accuracy curve over the certified samples (abstentions count as wrong).

    ``max_radius`` (R_max, derived from sigma, n and alpha) bounds every radius: where ``budget`` > R_max,
    ``accuracy_at_budget`` is 0 by construction, whatever the model.
    """

    sigma: float
    n0: int
    n: int
    alpha: float
    certified: int
    abstention_rate: float
    budget: float
    curve: SurvivalCurve

    @classmethod
    def of(cls, certificates: SmoothedCertificates, settings: SmoothingSettings, budget: float) -> SmoothedCertificate:
        """From the gathered per-sample certificates of one scope."""
        curve = SurvivalCurve.of(certificates.radius, certificates.correct())
        return cls(settings.sigma, settings.n0, settings.n, settings.alpha, int(certificates.prediction.numel()),
                   certificates.abstention_rate(), budget, curve)

    @property
    def accuracy_at_budget(self) -> float:
        """Smoothed certified accuracy at the table's budget."""
        return self.curve.at(self.budget)

    @property
    def max_radius(self) -> float:
        """R_max = sigma * Phi^-1(alpha^(1/n)), the largest radius CERTIFY can return at these settings."""
        return max_certified_radius(self.sigma, self.n, self.alpha)

    @property
    def budget_out_of_reach(self) -> bool:
        """Whether the budget exceeds R_max, so that ``accuracy_at_budget`` is 0 by construction."""
        return self.budget > self.max_radius

    def to_json(self) -> dict:
        """The fields, and the derived ``accuracy_at_budget`` and ``max_radius`` for readers (not read back)."""
        return {"sigma": self.sigma, "n0": self.n0, "n": self.n, "alpha": self.alpha, "certified": self.certified,
                "abstention_rate": self.abstention_rate, "budget": self.budget,
                "accuracy_at_budget": self.accuracy_at_budget, "max_radius": self.max_radius,
                "curve": self.curve.to_json()}

    @classmethod
    def from_json(cls, data: Mapping) -> SmoothedCertificate:
        return cls(data["sigma"], data["n0"], data["n"], data["alpha"], data["certified"], data["abstention_rate"],
                   data["budget"], SurvivalCurve.from_json(data["curve"]))


@dataclass(frozen=True)
class RobustnessMetrics:
    """Every number of one evaluation (the content of ``metrics.json``, less the report's name and
    run context).

    Attributes:
        samples: evaluated samples (all ranks).
        modalities: the model's modality names, in its order.
        settings: what was evaluated.
        accuracy: per threat, in the column order of the paper's Table 2.
        curves: accuracy against the l2-PGD radius.
        certified: radii of the common protocol (every model's Lipschitz table estimated over the
            evaluated samples); ``None`` when not certified.
        eta_ratio: the default pair's eta ratio (modality 0 over modality 1) from that table.
        audit: the radius audit of those radii.
        certified_model: radii from the model's own table (CRMT's tau~ over the training set).
        certified_sound: radii from sound Lipschitz upper bounds.
        sound_note: why there are no sound radii, when there are none and it is worth saying.
        smoothed: randomized smoothing per scope; ``None`` when not run.
        adaptive: the adaptive evaluation's suite, per-attack counts and sanity checks; ``None`` when not run
            (its accuracies are in ``accuracy``, as the ``adaptive`` threats).
    """

    samples: int
    modalities: list[str]
    settings: RobustnessSettings
    accuracy: dict[Threat, float]
    curves: AccuracyCurves
    certified: Certificate | None = None
    eta_ratio: EtaRatio | None = None
    audit: AuditCounts | None = None
    certified_model: Certificate | None = None
    certified_sound: Certificate | None = None
    sound_note: str = ""
    smoothed: dict[Scope, SmoothedCertificate] | None = None
    adaptive: AdaptiveSummary | None = None

    @property
    def threats(self) -> list[Threat]:
        """The threats evaluated, in the column order of the paper's Table 2."""
        return list(self.accuracy)

    def to_json(self) -> dict:
        """The ``metrics.json`` layout: ``accuracy`` by threat key and ``threats`` describing each key;
        ``certified_sound`` holds ``{"note": ...}`` when there are no sound radii but a note."""
        data: dict = {
            "samples": self.samples,
            "modalities": list(self.modalities),
            "settings": self.settings.to_json(),
            "threats": [threat.to_json() for threat in self.accuracy],
            "accuracy": {threat.key: value for threat, value in self.accuracy.items()},
            "curves": self.curves.to_json(),
        }
        optional = {
            "certified": self.certified, "eta_ratio": self.eta_ratio, "audit": self.audit,
            "certified_model": self.certified_model, "certified_sound": self.certified_sound,
        }
        data.update({key: value.to_json() for key, value in optional.items() if value is not None})
        if self.certified_sound is None and self.sound_note:
            data["certified_sound"] = {"note": self.sound_note}
        if self.smoothed is not None:
            data["smoothed"] = {scope.key: certificate.to_json() for scope, certificate in self.smoothed.items()}
        if self.adaptive is not None:
            data["adaptive"] = self.adaptive.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> RobustnessMetrics:
        """The metrics of :meth:`to_json` (other keys, such as the report's ``name`` and ``run``, are ignored)."""
        modalities = list(data["modalities"])
        threats = [Threat.from_json(threat) for threat in data["threats"]]
        sound = data.get("certified_sound", {})

        def certificate(key: str) -> Certificate | None:
            return Certificate.from_json(data[key], modalities) if key in data and "lipschitz" in data[key] else None

        return cls(
            samples=data["samples"],
            modalities=modalities,
            settings=RobustnessSettings.from_json(data["settings"]),
            accuracy={threat: data["accuracy"][threat.key] for threat in threats},
            curves=AccuracyCurves.from_json(data["curves"], modalities),
            certified=certificate("certified"),
            eta_ratio=EtaRatio.from_json(data["eta_ratio"]) if "eta_ratio" in data else None,
            audit=AuditCounts.from_json(data["audit"]) if "audit" in data else None,
            certified_model=certificate("certified_model"),
            certified_sound=certificate("certified_sound"),
            sound_note=sound.get("note", ""),
            smoothed=cls._smoothed_from_json(data["smoothed"], modalities) if "smoothed" in data else None,
            adaptive=AdaptiveSummary.from_json(data["adaptive"], modalities) if "adaptive" in data else None,
        )

    @staticmethod
    def _smoothed_from_json(data: Mapping, modalities: Sequence[str]) -> dict[Scope, SmoothedCertificate]:
        return {scope: SmoothedCertificate.from_json(data[scope.key]) for scope in Scope.every(modalities)}
