"""What a robustness evaluation computes: budgets, PGD steps, the adaptive suite, curves, certificates and the audit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from crmt.robustness.pgd import L2PGD
from crmt.robustness.smoothing import SmoothingSettings
from crmt.robustness.suite import NO_SUITE, AdaptiveSettings
from crmt.robustness.threats import Scope, Threat


@dataclass(frozen=True)
class RobustnessSettings:
    """What to evaluate; defaults follow the paper's protocol (method.md §5, baselines.md §10).

    Attributes:
        multimodal_eps: joint l2 budget of the multi-modal FGM and PGD (0.5).
        unimodal_eps: l2 budget of the uni-modal FGM and PGD (1.0).
        steps / step_fraction / random_start: PGD settings (4 steps of eps / 3, no random start).
        adaptive: the adaptive suite on every PGD column's ball (:mod:`~crmt.robustness.suite`), its sanity
            checks, and the radius audit under it; ``None``, or ``suite: none`` (the command line's off switch),
            the paper's attacks only: ``adaptive`` is then ``None``.
        missing_fill: value of a missing modality's normalised input (0: the data mean).
        curve_radii: increasing budgets of the accuracy-vs-radius curves (PGD continued across the
            radii from the table's attack, multi-modal and per modality; see ``_BatchAttacks.curves``).
        curve_steps: PGD steps at each curve radius other than the table's budget.
        certify: compute estimated certified radii (needs a certifiable model).
        sound_certificate: also compute radii from sound Lipschitz upper bounds (the layer-product
            bound: sound but, for trained networks, orders of magnitude too small to certify anything).
        audit_samples: how many samples (per rank) the radius audit attacks; 0 turns it off.
        audit_steps / audit_fraction: PGD steps and budget (fraction of the radius) of the audit,
            which starts from the multi-modal table attack's example rescaled to that budget; with
            ``adaptive``, the suite's gradient attacks (APGD-CE, APGD-T) then attack the samples PGD did
            not break, within the same budgets.
        audit_sound: audit the sound radii too (they must show no violation).
        radius_grid: radii at which certified accuracy is also sampled (the exact curve is reported too).
        smoothing: randomized smoothing (sound certificates, joint and per modality) of the first
            ``smoothing.samples`` test samples (all ranks together, spread evenly over the test
            split); ``None``, or ``samples: 0`` (how a command line turns it off: jsonargparse cannot set
            a nested callback argument to null), no smoothing: ``smoothing`` is then ``None``.
        seed: seeds random starts.
    """

    multimodal_eps: float = 0.5
    unimodal_eps: float = 1.0
    steps: int = 4
    step_fraction: float = 1 / 3
    random_start: bool = False
    adaptive: AdaptiveSettings | None = None
    missing_fill: float = 0.0
    curve_radii: tuple[float, ...] = (0.5, 1.0, 2.0)
    curve_steps: int = 1
    certify: bool = True
    sound_certificate: bool = False
    audit_samples: int = 256
    audit_steps: int = 5
    audit_fraction: float = 0.99
    audit_sound: bool = False
    radius_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
    smoothing: SmoothingSettings | None = None
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
        if self.smoothing is not None and self.smoothing.samples == 0:
            object.__setattr__(self, "smoothing", None)
        if self.adaptive is not None and self.adaptive.suite == NO_SUITE:
            object.__setattr__(self, "adaptive", None)

    def pgd(self, steps: int | None = None) -> L2PGD:
        """The paper's l2-PGD with these settings (``steps`` overriding theirs)."""
        return L2PGD(steps or self.steps, self.step_fraction, self.random_start)

    def budget(self, scope: Scope) -> float:
        """The l2 budget of the table's attacks on ``scope``: ``multimodal_eps`` or ``unimodal_eps``."""
        return self.multimodal_eps if scope.multimodal else self.unimodal_eps

    def threats(self, modalities: Sequence[str]) -> list[Threat]:
        """The columns of the paper's Table 2 in order: clean, multi-modal FGM, PGD (and the adaptive worst
        case), each modality's FGM, PGD (and adaptive), each modality missing."""
        everything, *single = Scope.every(modalities)
        kinds = ("fgm", "pgd", "adaptive") if self.adaptive is not None else ("fgm", "pgd")
        threats = [Threat("clean"), *(Threat(kind, everything.modalities, self.budget(everything)) for kind in kinds)]
        threats += [Threat(kind, scope.modalities, self.budget(scope)) for scope in single for kind in kinds]
        return threats + [Threat("missing", scope.modalities) for scope in single]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RobustnessSettings:
        """The settings of :meth:`to_json` (JSON lists back to tuples; files written before smoothing or the
        adaptive suite existed have no ``smoothing`` or ``adaptive`` key: none)."""
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        smoothing, adaptive = values.pop("smoothing", None), values.pop("adaptive", None)
        return cls(
            **values, smoothing=SmoothingSettings(**smoothing) if smoothing is not None else None,
            adaptive=AdaptiveSettings(**adaptive) if adaptive is not None else None,
        )
