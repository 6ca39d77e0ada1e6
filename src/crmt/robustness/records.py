"""The per-sample records of a robustness evaluation and the gathered results they make.

- :class:`BatchRecords`: one batch's outcomes per sample (per threat, per curve radius, and which
  attack of the adaptive suite broke it);
- :class:`CertifiedRadii`: every sample's certified radius per scope from one pair Lipschitz table;
- :class:`RobustnessResults`: every rank's records gathered, with the certificates, the audit, the
  smoothing certificates and the sanity checks; ``metrics()`` types them for ``metrics.json``,
  ``per_sample()`` is ``per_sample.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from crmt.robustness.certify import certified_radius, rounding_safe_logits, unimodal_radius
from crmt.robustness.results import (
    AccuracyCurves,
    AdaptiveSummary,
    AuditCounts,
    Certificate,
    EtaRatio,
    RadiusSummary,
    RobustnessMetrics,
    SmoothedCertificate,
)
from crmt.robustness.sanity import SanityCheck
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import SmoothedCertificates
from crmt.robustness.threats import Scope, Threat


class BatchRecords(NamedTuple):
    """Per-sample outcomes of one batch: ``labels`` (B,), clean ``logits`` (B, K), ``correct`` (B,) bool
    per threat in the column order of the paper's Table 2 (True where the attacked sample is still
    classified correctly), ``curves`` (B, R) bool per scope, the same over ``curve_radii``, and, with
    the adaptive suite, ``broken_by`` (B,) int64 per scope: the index of the suite's attack that broke
    the sample first (:data:`~crmt.robustness.adaptive.STANDING`, :data:`~crmt.robustness.adaptive.NOT_ATTACKED`)."""

    labels: torch.Tensor
    logits: torch.Tensor
    correct: dict[Threat, torch.Tensor]
    curves: dict[Scope, torch.Tensor]
    broken_by: dict[Scope, torch.Tensor]



EVALUATED_LIPSCHITZ_SOURCE = "estimated (max input-gradient norms over the evaluated samples)"
MODEL_LIPSCHITZ_SOURCE = "estimated (the model's own tau~, max over the training set, as in the paper)"
MODEL_SOUND_LIPSCHITZ_SOURCE = (
    "sound (the model's own tau = its encoders' Lipschitz bounds, Theorem 3.5 as CRMT's step 2 optimised it)"
)
SOUND_LIPSCHITZ_SOURCE = "sound upper bound (layer product of the encoders, times the head's row differences)"
CONSTRUCTION_LIPSCHITZ_SOURCE = "sound (1-Lipschitz encoders by construction, times the head's row differences)"
SOUND_SOURCES = (MODEL_SOUND_LIPSCHITZ_SOURCE, SOUND_LIPSCHITZ_SOURCE, CONSTRUCTION_LIPSCHITZ_SOURCE)
"""The sources whose radii are computed with the rounding margin (:func:`~crmt.robustness.certify.rounding_safe_logits`)."""


@dataclass
class CertifiedRadii:
    """Every sample's certified radius (N,) per scope from one pair Lipschitz table (M, K, K):
    the multi-modal radius (Theorems 3.3 and 3.5) and each modality's uni-modal radius (Proposition 3.4; method.md §1-§2);
    ``lipschitz`` says where the table's constants come from."""

    lipschitz: str
    pair_lipschitz: torch.Tensor
    radii: dict[Scope, torch.Tensor]

    @classmethod
    def of(
        cls, lipschitz: str, pair_lipschitz: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, modalities: Sequence[str]
    ) -> CertifiedRadii:
        """The radii of samples with clean ``logits`` (N, K) and ``labels`` (N,); 0 where misclassified. A sound
        ``lipschitz`` source (``SOUND_SOURCES``) gets the rounding margin of float32 logits."""
        table = pair_lipschitz.to(logits.device)
        if lipschitz in SOUND_SOURCES:
            logits = rounding_safe_logits(logits.float(), labels)
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
        broken_by: (N,) int64 per scope with the adaptive suite: which of ``adaptive_attacks`` broke the
            sample first (-1: none, -2: misclassified clean).
        adaptive_attacks: the names of the suite's attacks, in the order they ran.
        checks: the sanity checks of the adaptive evaluation.
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
    broken_by: dict[Scope, torch.Tensor] = field(default_factory=dict)
    adaptive_attacks: list[str] = field(default_factory=list)
    checks: list[SanityCheck] = field(default_factory=list)

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
            adaptive=self._adaptive_summary(),
        )

    def _adaptive_summary(self) -> AdaptiveSummary | None:
        if self.settings.adaptive is None:
            return None
        return AdaptiveSummary.of(self.settings.adaptive, self.adaptive_attacks, self.broken_by, self.checks)

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
        certified rows' ``index`` (dataset index), smoothed ``prediction`` (-1: abstained) and ``radius``; with
        sound radii ``sound_radius`` (per scope key, each clip's) and ``sound_certified`` (:meth:`sound_certified_outcomes`); with
        the adaptive suite ``adaptive_broken_by``: per scope key, which of the suite's attacks (metrics.json's
        ``adaptive.attacks``) broke the sample first (-1: none, -2: misclassified clean)."""
        index = self.index if self.index is not None else torch.arange(self.samples)
        values: dict = {
            "index": index.tolist(),
            "label": self.labels.tolist(),
            "correct": {threat.key: outcome.int().tolist() for threat, outcome in self.correct.items()},
        }
        for key, certificate in (("radius", self.certified), ("model_radius", self.certified_model)):
            if certificate is not None:
                values[key] = certificate.multimodal.float().tolist()
        if self.broken_by:
            values["adaptive_broken_by"] = {scope.key: codes.tolist() for scope, codes in self.broken_by.items()}
        if self.smoothed is not None:
            values["smoothed"] = {
                scope.key: {"index": c.index.tolist(), "prediction": c.prediction.tolist(), "radius": c.radius.tolist()}
                for scope, c in self.smoothed.items()
            }
        if self.certified_sound is not None:
            values["sound_radius"] = {scope.key: radius.float().tolist() for scope, radius in self.certified_sound.radii.items()}
            values["sound_certified"] = self.sound_certified_outcomes()
        return values

    def sound_certified_outcomes(self) -> dict[str, list[int]]:
        """0/1 per sample: a sound radius at least the scope's table budget (key: the scope's key) and at least half
        of it (``<key>_half``), for each scope of ``certified_sound`` (a misclassified sample's radius is 0, and
        budgets are positive, so 1 also means clean-correct)."""
        outcomes = {}
        for scope, radius in self.certified_sound.radii.items():
            budget = self.settings.budget(scope)
            for suffix, threshold in (("", budget), ("_half", budget / 2)):
                outcomes[f"{scope.key}{suffix}"] = (radius >= threshold).int().tolist()
        return outcomes
