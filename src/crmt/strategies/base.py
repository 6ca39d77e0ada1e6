"""The shared LightningModule: encoders, a strategy-specific head, evaluation and logging.

Each strategy subclasses :class:`MultiModalModule` and supplies only what makes it
different: its head (``build_head``) and its training step.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from crmt.models.encoders import AudioEncoder, VisualEncoder
from crmt.models.heads import FusionOutput

MODALITIES: tuple[str, str] = ("visual", "audio")
"""Modality order m = (v, a) used in every (M, ...) tensor: scores, integration weights, tau."""

Batch = dict[str, torch.Tensor]


class MultiModalModule(LightningModule):
    """Audio-visual classifier: visual (B, 3, T, H, W) and audio (B, 1, F, T_a) -> logits (B, K).

    Args:
        num_classes: K (linked from the data module by the CLI).
        encoder_width: channels of the first ResNet18 stage (64 in the paper); features are 8x that.
        visual_channels / audio_channels: input channels of each encoder.
        optimizer: optimiser factory for the step that trains the whole model.
        lr_scheduler: optional scheduler factory for that optimiser, stepped once per epoch.
    """

    factory_arguments: tuple[str, ...] = ("optimizer", "lr_scheduler")
    """Constructor arguments that are factories, kept out of the saved hyperparameters."""

    def __init__(
        self,
        num_classes: int,
        encoder_width: int = 64,
        visual_channels: int = 3,
        audio_channels: int = 1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.factory_arguments))
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.visual_encoder = VisualEncoder(visual_channels, encoder_width)
        self.audio_encoder = AudioEncoder(audio_channels, encoder_width)
        self.head = self.build_head([self.visual_encoder.out_dim, self.audio_encoder.out_dim], num_classes)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    @abstractmethod
    def build_head(self, feature_dims: list[int], num_classes: int) -> nn.Module:
        """The fusion head; its forward maps [phi^(v), phi^(a)] to a FusionOutput."""

    @property
    def encoders(self) -> tuple[nn.Module, nn.Module]:
        """Encoders in MODALITIES order."""
        return self.visual_encoder, self.audio_encoder

    @staticmethod
    def modality_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs in MODALITIES order: visual (B, 3, T, H, W), audio (B, 1, F, T_a)."""
        return batch["visual"], batch["audio"]

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> FusionOutput:
        return self.head([self.visual_encoder(visual), self.audio_encoder(audio)])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def _evaluate(self, batch: Batch, stage: str) -> FusionOutput:
        output = self(*self.modality_inputs(batch))
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

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")
