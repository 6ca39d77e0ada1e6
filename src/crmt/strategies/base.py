"""The shared LightningModule: encoders, a strategy-specific head, evaluation and logging.

Each strategy subclasses :class:`MultiModalModule` and supplies only what makes it
different: its head (``build_head``) and its training step.

A model is split into two stages that attacks and certification rely on:
``encode_modality(m, x^(m)) -> phi^(m)`` (one modality alone) and ``fuse([phi^(m)]) ->
FusionOutput``. For certifiable models (``certifiable = True``) the fusion is linear in each
modality's features, ``logits = sum_m A^(m) * (W^(m) phi^(m)) + b`` (see
:mod:`crmt.models.heads`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from crmt.models.encoders import EncoderKind, build_encoder
from crmt.models.heads import FusionOutput
from crmt.models.noise import GaussianInputNoise, modality_sigmas
from crmt.models.protocol import Batch, LipschitzBounded, PixelData, PixelNormalization, conforms
from crmt.robustness.ball import PixelRange, pixel_ranges_for
from crmt.runs import IDENTITY_KEY, checkpoint_identity

__all__ = ["Batch", "MultiModalModule", "PAPER_INPUT_SHAPES"]

PAPER_INPUT_SHAPES: dict[str, list[int]] = {"visual": [3, 3, 224, 224], "audio": [1, 128, 1024]}
"""The paper's inputs: 3 RGB frames of 224x224 and a 128-bin fbank of 1024 frames (visual first, as in CRMT)."""


def checked_pixel_normalization(
    normalization: PixelNormalization | None, input_shapes: dict[str, list[int]]
) -> PixelNormalization | None:
    """``normalization`` with plain float tuples, checked against the model's inputs: every modality it names is
    one of ``input_shapes``, with one mean and one std > 0 per channel (the first dimension of its shape)."""
    if normalization is None:
        return None
    checked = {}
    for name, value in dict(normalization).items():
        if name not in input_shapes:
            raise ValueError(
                f"pixel_normalization names {name!r}, which is not one of the model's modalities {list(input_shapes)}"
            )
        mean, std = (tuple(float(v) for v in part) for part in value)
        channels = input_shapes[name][0]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"pixel_normalization[{name!r}] needs {channels} means and stds (input shape {input_shapes[name]}), "
                f"got {mean} and {std}"
            )
        PixelRange(mean, std)  # std > 0
        checked[name] = (mean, std)
    return checked


class MultiModalModule(LightningModule):
    """Multi-modal classifier: one input per modality -> logits (B, K).

    Args:
        num_classes: K (linked from the data module by the CLI).
        input_shapes: modality name -> shape of one input without the batch dimension,
            e.g. ``{"visual": [3, T, H, W], "audio": [1, F, T_a]}`` (linked from the data
            module by the CLI). The order is the modality order m of every (M, ...) tensor.
        encoder_width: channels of the first ResNet18 stage (64 in the paper); features are 8x that.
        encoder: ``resnet18`` (the paper's encoders) or ``lipschitz`` (1-Lipschitz by construction, so the
            certified radii of every head are sound: :mod:`crmt.models.lipschitz_encoders`).
        optimizer: optimiser factory for the step that trains the whole model.
        lr_scheduler: optional scheduler factory for that optimiser, stepped once per epoch.
        noise_sigma: standard deviation of the Gaussian noise added to the normalised inputs in
            training mode (Gaussian data augmentation, for randomized smoothing): one sigma for
            every modality, or modality name -> sigma (names left out: 0). 0 adds nothing and draws
            no random numbers. Evaluation, attacks and certificates run in evaluation mode and see
            clean inputs.
        pixel_normalization: modality name -> (mean per channel, std per channel), C values each for a
            modality of input shape (C, ...), of the modalities whose inputs are normalised pixels
            (x - mean_c) / std_c of p in [0, 1] (linked from the data module's ``pixel_normalization`` by
            the CLI): adversarial training and the robustness callbacks keep attacked frames in that range
            (:attr:`pixel_ranges`). ``None`` (or ``{}``): no pixel modality, nothing is clamped. Saved with
            the hyperparameters, so a model loaded from its checkpoint keeps its pixel ranges.

    A subclass passes the arguments it does not use itself on to this constructor (``**kwargs``, or by
    name), so that the CLI's links from the data module (``num_classes``, ``input_shapes``,
    ``pixel_normalization``) reach it.
    """

    factory_arguments: tuple[str, ...] = ("optimizer", "lr_scheduler")
    """Constructor arguments that are factories, kept out of the saved hyperparameters."""
    certifiable: ClassVar[bool] = True
    """Whether the logits are linear in each modality's features (method.md §1-§2), so radii apply."""

    def __init__(
        self,
        num_classes: int,
        input_shapes: dict[str, list[int]] | None = None,
        encoder_width: int = 64,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        noise_sigma: float | dict[str, float] = 0.0,
        pixel_normalization: PixelNormalization | None = None,
        encoder: EncoderKind = "resnet18",
    ) -> None:
        super().__init__()
        input_shapes = {name: list(shape) for name, shape in (input_shapes or PAPER_INPUT_SHAPES).items()}
        if len(input_shapes) < 2:
            raise ValueError(f"input_shapes needs at least two modalities, got {list(input_shapes)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        pixel_normalization = checked_pixel_normalization(pixel_normalization, input_shapes)
        self.save_hyperparameters(ignore=list(self.factory_arguments))
        self.hparams.input_shapes = input_shapes
        self.hparams.pixel_normalization = (
            None if pixel_normalization is None
            else {name: [list(mean), list(std)] for name, (mean, std) in pixel_normalization.items()}
        )
        self.num_classes = num_classes
        self.modalities: list[str] = list(input_shapes)
        self.input_shapes = input_shapes
        self.pixel_normalization: PixelNormalization | None = pixel_normalization
        self.pixel_ranges: list[PixelRange | None] = pixel_ranges_for(self.modalities, pixel_normalization)
        """One pixel range per modality in modality order (``None``: not clamped), from ``pixel_normalization``."""
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.input_noise = nn.ModuleDict(
            {name: GaussianInputNoise(sigma) for name, sigma in modality_sigmas(noise_sigma, self.modalities).items()}
        )
        self.encoder_kind = encoder
        self.encoders = self.build_encoders(input_shapes, encoder_width)
        self.head = self.build_head([encoder.out_dim for encoder in self.encoders.values()], num_classes)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        self._check_pixel_normalization()

    def _check_pixel_normalization(self) -> None:
        """Warn when the attached data module declares other pixel modalities than this model was built with
        (a model built by hand without ``pixel_normalization=data.pixel_normalization``, or loaded from a
        checkpoint saved before the argument existed): its attacks would clamp frames differently."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not conforms(datamodule, PixelData):
            return
        declared = pixel_ranges_for(self.modalities, datamodule.pixel_normalization)
        if declared != self.pixel_ranges:
            rank_zero_warn(
                f"{type(self).__name__} was built with pixel_normalization={self.pixel_normalization} but the data "
                f"module {type(datamodule).__name__} declares {datamodule.pixel_normalization}: attacks clamp frames "
                "with the model's (the CLI links the data module's; by hand, pass "
                "pixel_normalization=data.pixel_normalization)"
            )

    def build_encoders(self, input_shapes: dict[str, list[int]], width: int) -> nn.ModuleDict:
        """One encoder per modality (of ``encoder``'s kind, chosen by the input's shape); each has ``out_dim``."""
        return nn.ModuleDict({name: build_encoder(shape, width, self.encoder_kind) for name, shape in input_shapes.items()})

    @property
    def encoders_bounded_by_construction(self) -> bool:
        """Whether every encoder is Lipschitz-bounded by construction (``encoder: lipschitz``): its sound bound
        is then tight enough to certify with (:meth:`encoder_lipschitz_bound`)."""
        return all(getattr(encoder, "bounded_by_construction", False) for encoder in self.encoders.values())

    @abstractmethod
    def build_head(self, feature_dims: list[int], num_classes: int) -> nn.Module:
        """The fusion head; its forward maps [phi^(m)] to a FusionOutput."""

    def inputs(self, batch: Batch) -> list[torch.Tensor]:
        """The batch's inputs in modality order."""
        missing = [name for name in self.modalities if name not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} input; the model's modalities are {self.modalities}")
        return [batch[name] for name in self.modalities]

    def encode_modality(self, m: int, inputs: torch.Tensor) -> torch.Tensor:
        """phi^(m)(x^(m)): the features of modality ``m`` alone, (B, D_m); in training mode of x^(m) + the
        modality's input noise (``noise_sigma``)."""
        name = self.modalities[m]
        return self.encoders[name](self.input_noise[name](inputs))

    def fuse(self, features: Sequence[torch.Tensor]) -> FusionOutput:
        """Logits and per-modality scores from the features of every modality."""
        return self.head(features)

    def forward(self, inputs: Sequence[torch.Tensor]) -> FusionOutput:
        return self.fuse([self.encode_modality(m, x) for m, x in enumerate(inputs)])

    def checkpoint_milestone(self) -> str | None:
        """A name for the state at the end of this epoch worth keeping beside ``last.ckpt`` (a phase
        change; see :class:`crmt.callbacks.RunCheckpoints`), or ``None``."""
        return None

    def known_pair_lipschitz(self) -> torch.Tensor | None:
        """A pair Lipschitz table (M, K, K) the strategy estimated itself (see
        :mod:`crmt.robustness.certify`), or ``None``; evaluation then estimates one."""
        return None

    def encoder_lipschitz_bound(self, m: int) -> float:
        """A sound upper bound of the l2 Lipschitz constant of ``encode_modality(m, .)``; raises
        NotImplementedError for an encoder that does not expose one (``lipschitz_upper_bound``)."""
        name = self.modalities[m]
        encoder = self.encoders[name]
        if not conforms(encoder, LipschitzBounded):
            raise NotImplementedError(f"no Lipschitz upper bound is implemented for {type(encoder).__name__}")
        return encoder.lipschitz_upper_bound(self.input_shapes[name])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random state (torch, CUDA, numpy, Python) with the weights, so that a fit resumed
        from this checkpoint draws what the uninterrupted fit would have drawn (attack starts, mixing).
        Stored as tensors and numbers only: checkpoints load with ``weights_only=True``."""
        states = _collect_rng_states(include_cuda=True)
        kind, keys, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss))
        checkpoint["rng_states"] = states
        checkpoint[IDENTITY_KEY] = checkpoint_identity(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the random state saved with the checkpoint when resuming ``fit`` (not for evaluation)."""
        if "rng_states" not in checkpoint or self._trainer is None or self.trainer.state.fn != "fit":
            return
        states = dict(checkpoint["rng_states"])
        kind, keys, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
        _set_rng_states(states)

    def log_train(self, values: dict[str, torch.Tensor], batch: Batch, prog_bar: Sequence[str] = ("loss",)) -> None:
        """Log ``train/<name>`` for each value, per epoch and per step."""
        batch_size = batch["label"].shape[0]
        for name, value in values.items():
            self.log(f"train/{name}", value, batch_size=batch_size, prog_bar=name in prog_bar)

    def _evaluate(self, batch: Batch | None, stage: str) -> FusionOutput | None:
        if batch is None:  # every clip of the batch failed to decode and was skipped
            return None
        output = self(self.inputs(batch))
        labels = batch["label"]
        accuracy = self.val_accuracy if stage == "val" else self.test_accuracy
        accuracy(output.logits, labels)
        batch_size = labels.shape[0]
        self.log(f"{stage}/loss", F.cross_entropy(output.logits, labels), batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, batch_size=batch_size, prog_bar=True)
        self.log_extra_metrics(output, batch, stage)
        return output

    def log_extra_metrics(self, output: FusionOutput, batch: Batch, stage: str) -> None:
        """Strategy-specific evaluation metrics; none by default."""

    def validation_step(self, batch: Batch | None, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch | None, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Batch | None, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """``index``, ``label`` (B,) (-1 where unknown), ``probabilities`` (B, K) float32 (softmax of the
        logits) and ``predicted`` (B,) of a batch (see :class:`crmt.callbacks.PredictionWriter`)."""
        if batch is None:
            return None
        logits = self(self.inputs(batch)).logits.float()
        index = batch["index"]
        label = batch["label"] if "label" in batch else torch.full_like(index, -1)
        return {"index": index, "label": label, "probabilities": logits.softmax(dim=1), "predicted": logits.argmax(dim=1)}
