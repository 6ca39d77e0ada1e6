"""What an evaluation measures robustness against, as values: the keys of every result.

- :class:`Scope`: the modalities a perturbation moves, all of them together (multi-modal) or
  one; it keys the accuracy-vs-radius curves and the certified radii.
- :class:`Threat`: one column of the paper's Table 2 (clean, FGM or l2-PGD within a budget on a
  scope, a missing modality), or the adaptive worst case on a PGD column's ball; it keys the
  per-sample correctness and the accuracies.

Their ``key`` is the name a result has in ``metrics.json`` and ``per_sample.json``; their
``title`` or ``label`` is what a table or a figure shows. Names are built here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

ThreatKind = Literal["clean", "fgm", "pgd", "adaptive", "missing"]
"""clean inputs; the fast gradient method or l2-PGD (the paper's protocol) within an l2 budget; the worst
case over the adaptive suite and the paper's attacks within the same budget; a modality replaced by a constant."""
ATTACK_KINDS: tuple[str, ...] = ("fgm", "pgd", "adaptive")
"""The kinds that attack within an l2 budget."""

MULTIMODAL_KEY = "multimodal"
"""The key of the multi-modal scope's curve and certificate in ``metrics.json``."""

KIND_TITLES: dict[str, str] = {"clean": "Clean", "fgm": "FGM", "pgd": "PGD-l2", "adaptive": "Adaptive", "missing": "missing"}
"""How tables name each kind of threat."""


@dataclass(frozen=True)
class Scope:
    """The modalities a perturbation moves: every modality of the model together (multi-modal) or one.

    The evaluation attacks and certifies no other subsets, so more than one modality means all of them.
    """

    modalities: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("a scope moves at least one modality")

    @classmethod
    def every(cls, modalities: Sequence[str]) -> list[Scope]:
        """The multi-modal scope, then each modality's own, in the model's modality order."""
        return [cls(tuple(modalities)), *(cls((name,)) for name in modalities)]

    @property
    def multimodal(self) -> bool:
        return len(self.modalities) > 1

    @property
    def key(self) -> str:
        """``multimodal`` or the modality's name: its key in ``metrics.json``'s curves and certificates."""
        return MULTIMODAL_KEY if self.multimodal else self.modalities[0]

    @property
    def suffix(self) -> str:
        """What a logged metric's name ends with: nothing for the multi-modal scope, ``_<modality>`` for one."""
        return "" if self.multimodal else f"_{self.modalities[0]}"

    @property
    def label(self) -> str:
        """A figure's legend entry: ``multi-modal`` or ``<modality> only``."""
        return "multi-modal" if self.multimodal else f"{self.modalities[0]} only"


@dataclass(frozen=True)
class Threat:
    """One column of the paper's Table 2: ``kind`` on the ``attacked`` modalities within l2 ``budget``.

    clean: nothing attacked, no budget; fgm / pgd / adaptive: a scope (one modality, or every modality:
    the multi-modal attack) and a positive budget; missing: one modality, no budget.
    """

    kind: ThreatKind
    attacked: tuple[str, ...] = ()
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(ThreatKind):
            raise ValueError(f"unknown threat kind {self.kind!r}; expected one of {get_args(ThreatKind)}")
        attacks = self.kind in ATTACK_KINDS
        if (self.kind == "clean") != (not self.attacked) or (self.kind == "missing" and len(self.attacked) != 1):
            raise ValueError(f"a {self.kind} threat cannot attack {self.attacked}")
        if attacks != (self.budget is not None) or (attacks and self.budget <= 0):
            raise ValueError(f"a {self.kind} threat cannot have budget {self.budget}")

    @property
    def scope(self) -> Scope:
        """The attacked modalities as a :class:`Scope` (``ValueError`` for a clean threat, which attacks none)."""
        return Scope(self.attacked)

    @property
    def key(self) -> str:
        """Its key in ``metrics.json``'s accuracies and ``per_sample.json``: ``clean``, ``fgm``, ``pgd``,
        ``adaptive`` (multi-modal), ``fgm_<m>``, ``pgd_<m>``, ``adaptive_<m>``, ``missing_<m>``."""
        return self.kind if self.kind == "clean" else self.kind + self.scope.suffix

    @property
    def title(self) -> str:
        """Its column title in the tables: ``Clean``, ``FGM``, ``PGD-l2``, ``Adaptive``, ``FGM <m>``, ``PGD-l2 <m>``,
        ``Adaptive <m>``, ``missing <m>``."""
        kind = KIND_TITLES[self.kind]
        return kind if self.kind == "clean" or self.scope.multimodal else f"{kind} {self.attacked[0]}"

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind, "attacked": list(self.attacked), "budget": self.budget}

    @classmethod
    def from_json(cls, data: dict) -> Threat:
        """The threat of :meth:`to_json`; ``ValueError`` if the stored key is not the threat's own."""
        threat = cls(data["kind"], tuple(data["attacked"]), data["budget"])
        if threat.key != data["key"]:
            raise ValueError(f"threat {data} has key {data['key']!r}, expected {threat.key!r}")
        return threat

