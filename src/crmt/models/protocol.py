"""The contract between a trained model and everything that attacks or certifies it, and what a
model asks of a data module.

:mod:`crmt.robustness` and :mod:`crmt.callbacks` type against these protocols, never against a
strategy class: any ``nn.Module`` with these members can be attacked, and, when its head is a
:class:`LinearFusionHead` (logits linear in each modality's features), certified.

The data side: every data module declares which of its inputs are pixels (:class:`PixelData`; the
CLI links its ``pixel_normalization`` into the model, :func:`declared_pixel_normalization`), and a
data module that can leave the training samples' inputs out implements :class:`MediaSwitchable`
(CRMT's step 2 reads only ``index`` and ``label``). The data modules of :mod:`data_modules`
implement both; nothing here imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from crmt.models.heads import FusionOutput

Batch = dict[str, torch.Tensor]
"""A collated batch: one input tensor per modality name, ``label`` (B,) and ``index`` (B,)."""

PixelNormalization = dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
"""Modality name -> (mean per channel, std per channel) of the modalities whose inputs are normalised
pixels, x = (p - mean_c) / std_c of pixel values p in [0, 1] (channels on dim 1 of a (B, C, ...) batch);
``{}`` when no modality is pixels. Attacks keep perturbed pixel modalities in that range."""


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
    pixel_normalization: PixelNormalization | None
    """The pixel modalities' normalisation (:data:`PixelNormalization`); ``None`` or ``{}``: no pixel modality,
    nothing is clamped. Evaluation clamps attacked frames with it."""

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


class PixelData(Protocol):
    """A data module that declares which of its inputs are pixels (every data module of the project does)."""

    @property
    def pixel_normalization(self) -> PixelNormalization:
        """:data:`PixelNormalization` of its batches' inputs, ``{}`` when none is pixels."""


def declared_pixel_normalization(datamodule: Any) -> PixelNormalization:
    """The ``pixel_normalization`` ``datamodule`` declares (:class:`PixelData`), as the CLI links it into the
    model; a data module that declares none is an error naming its class (rather than attacks that silently
    stop clamping frames)."""
    if not conforms(datamodule, PixelData):
        name = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
        raise TypeError(
            f"the data module {name} declares no pixel_normalization: give it a `pixel_normalization` property, "
            "modality -> (mean per channel, std per channel) of its pixel inputs, or {} when no input is pixels "
            "(the model's attacks clamp perturbed frames with it)"
        )
    normalization = datamodule.pixel_normalization
    if not isinstance(normalization, dict):
        raise TypeError(
            f"{type(datamodule).__qualname__}.pixel_normalization must be a dict modality -> (mean, std), "
            f"got {type(normalization).__name__}"
        )
    return normalization


class MediaSwitchable(Protocol):
    """A data module whose training samples can leave their inputs out.

    CRMT's step 2 trains only the integration weights a^(m) from scores cached at the phase switch, so it
    reads only ``index`` and ``label`` of its training batches: it calls ``set_training_media(False)`` at the
    switch and ``set_training_media(True)`` when training ends. A data module without it simply keeps
    loading (and decoding) the inputs in step 2, which step 2 then ignores.
    """

    def set_training_media(self, enabled: bool) -> None:
        """From the next training item on (in every DataLoader worker, persistent ones included): the samples'
        inputs with ``label`` and ``index`` (``enabled``), or only ``label`` and ``index``, nothing decoded."""


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
