"""The contract between a trained model and everything that attacks or certifies it.

:mod:`crmt.robustness` and :mod:`crmt.callbacks` type against these protocols, never against a
strategy class: any ``nn.Module`` with these members can be attacked, and, when its head is a
:class:`LinearFusionHead` (logits linear in each modality's features), certified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from crmt.models.heads import FusionOutput

Batch = dict[str, torch.Tensor]
"""A collated batch: one input tensor per modality name, ``label`` (B,) and ``index`` (B,)."""


class LinearFusionHead(Protocol):
    """A head whose logits are ``sum_m A^(m) * (W^(m) phi^(m)) + b`` (method.md §1-§2)."""

    per_class_certificate: bool
    """True when the certificate needs one Lipschitz constant per class (orthogonal head,
    Theorem 3.5); False when it needs one per class pair (concatenation head, Theorem 3.3)."""

    @property
    def bias(self) -> torch.Tensor:
        """b: (K,)."""

    def modality_weights(self) -> list[torch.Tensor]:
        """W^(m) for each modality, each (K, D_m)."""

    def integration_weights(self) -> torch.Tensor:
        """A: (M, K)."""


class LipschitzBounded(Protocol):
    """An encoder that knows a sound upper bound of its own l2 Lipschitz constant."""

    def lipschitz_upper_bound(self, input_shape: Sequence[int]) -> float:
        """Upper bound on inputs of ``input_shape`` (one sample, no batch dimension), batch norm in eval mode."""


class MultiModalModel(Protocol):
    """A classifier of M modalities split into per-modality encoders and a fusion.

    ``model(inputs)`` must equal ``model.fuse([model.encode_modality(m, x) for m, x in enumerate(inputs)])``.
    """

    modalities: list[str]
    num_classes: int

    @property
    def device(self) -> torch.device: ...

    def __call__(self, inputs: Sequence[torch.Tensor]) -> FusionOutput: ...

    def encode_modality(self, m: int, inputs: torch.Tensor) -> torch.Tensor:
        """phi^(m)(x^(m)): (B, ...) -> (B, D_m)."""

    def fuse(self, features: Sequence[torch.Tensor]) -> FusionOutput:
        """Logits (B, K) and per-modality scores (M, B, K) from every modality's features."""


class CertifiableModel(MultiModalModel, Protocol):
    """A :class:`MultiModalModel` whose radii the bounds of method.md §1-§2 give."""

    certifiable: bool
    head: LinearFusionHead

    def known_pair_lipschitz(self) -> torch.Tensor | None:
        """A pair Lipschitz table (M, K, K) the model estimated itself (CRMT's tau~), or ``None``."""

    def encoder_lipschitz_bound(self, m: int) -> float:
        """A sound upper bound of the l2 Lipschitz constant of ``encode_modality(m, .)``."""


def protocol_members(protocol: type) -> set[str]:
    """The public names ``protocol`` declares (annotated attributes, properties, methods), its protocol bases' included."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base is not Protocol and getattr(base, "_is_protocol", False):
            names |= {name for name in (*vars(base).get("__annotations__", {}), *vars(base)) if not name.startswith("_")}
    return names


def conforms(obj: object, protocol: type) -> bool:
    """Whether ``obj`` has every member of ``protocol``, looked up with ``hasattr``. (``isinstance`` on a
    runtime-checkable protocol looks members up with ``inspect.getattr_static`` from Python 3.12 on,
    which misses an ``nn.Module``'s parameters, buffers and submodules: every head would fail.)"""
    return all(hasattr(obj, name) for name in protocol_members(protocol))


def is_certifiable(model: object) -> bool:
    """Whether ``model`` declares itself certifiable (its logits are linear in each modality's features)."""
    return bool(getattr(model, "certifiable", False)) and conforms(getattr(model, "head", None), LinearFusionHead)
