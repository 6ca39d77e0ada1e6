"""MMT and CRMT-MMT: a multi-modal transformer with hierarchical attention, from scratch (baselines.md §8).

``encode_modality(m, x)`` is modality m's transformer stream (it returns the token sequence,
class token first); ``fuse`` runs the cross-modal layers over the concatenated sequences and
feeds the modalities' class tokens to the head: a concat head (MMT, trained with CE) or the
orthogonal head with the CRMT step-1 loss (CRMT-MMT). After the cross-modal layers each class
token depends on every modality, so the logits are not a sum of uni-modal scores: the models
are not certifiable, and CRMT-MMT has no tau~ estimation and no step 2 (method.md §3 Variants).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import ClassVar

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from crmt.models.heads import FusionOutput
from crmt.models.protocol import PixelNormalization
from crmt.models.transformer import (
    CrossModalTransformer,
    ModalityTransformer,
    TransformerConfig,
)
from crmt.strategies.crmt import CRMTJointTraining
from crmt.strategies.jt import JointTraining


class TransformerStreams:
    """Mixin for a :class:`MultiModalModule` whose hparams hold the :class:`TransformerConfig` fields:
    transformer streams as the encoders and cross-modal layers in ``fuse``."""

    certifiable: ClassVar[bool] = False
    cross_modal: CrossModalTransformer

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(**{field.name: self.hparams[field.name] for field in fields(TransformerConfig)})

    def build_encoders(self, input_shapes: dict[str, list[int]], width: int) -> nn.ModuleDict:
        """One :class:`ModalityTransformer` per modality (``width`` does not apply), and the cross-modal layers."""
        config = self.transformer_config()
        self.cross_modal = CrossModalTransformer(config)
        return nn.ModuleDict({name: ModalityTransformer(shape, config) for name, shape in input_shapes.items()})

    def fuse(self, features: Sequence[torch.Tensor]) -> FusionOutput:
        """Token sequences [(B, N_m, D)] -> cross-modal layers -> head over the class tokens [(B, D)]."""
        return self.head(self.cross_modal(features))

    def encoder_lipschitz_bound(self, m: int) -> float:
        raise NotImplementedError(
            f"{type(self).__name__} is not certifiable: after the cross-modal layers every class token depends on "
            "every modality, so no per-modality Lipschitz bound applies"
        )


class MultiModalTransformer(TransformerStreams, JointTraining):
    """MMT: CE on a concat head over the class tokens, h = W [CLS_v; CLS_a] + b.

    Args (besides ``num_classes``, ``input_shapes``, ``optimizer``, ``lr_scheduler``, ``noise_sigma``,
    ``pixel_normalization``): the :class:`TransformerConfig` fields (token width, per-modality and
    cross-modal depths, heads, patch size, MLP ratio, dropout); the proposal of baselines.md §8 by default.
    """

    def __init__(
        self,
        num_classes: int,
        input_shapes: dict[str, list[int]] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        embed_dim: int = 512,
        stream_depth: int = 4,
        fusion_depth: int = 4,
        num_heads: int = 8,
        patch_size: int = 16,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        noise_sigma: float | dict[str, float] = 0.0,
        pixel_normalization: PixelNormalization | None = None,
    ) -> None:
        super().__init__(
            num_classes, input_shapes, optimizer=optimizer, lr_scheduler=lr_scheduler, noise_sigma=noise_sigma,
            pixel_normalization=pixel_normalization,
        )


class CRMTMultiModalTransformer(TransformerStreams, CRMTJointTraining):
    """CRMT-MMT: CRMT step 1 only, CE + rho * L1 on the orthogonal head over the class tokens.

    Args: those of :class:`MultiModalTransformer`, and ``rho``, ``step1_epochs`` and
    ``init_integration`` of :class:`CRMTJointTraining`; ``step2_epochs`` must stay 0 (it is an
    argument only so the CLI's epoch plan sets trainer.max_epochs = step1_epochs).
    """

    def __init__(
        self,
        num_classes: int,
        input_shapes: dict[str, list[int]] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        rho: float = 2.0,
        step1_epochs: int = 1,
        step2_epochs: int = 0,
        init_integration: float = 0.1,
        embed_dim: int = 512,
        stream_depth: int = 4,
        fusion_depth: int = 4,
        num_heads: int = 8,
        patch_size: int = 16,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        noise_sigma: float | dict[str, float] = 0.0,
        pixel_normalization: PixelNormalization | None = None,
    ) -> None:
        if step2_epochs != 0:
            raise ValueError(
                f"CRMT-MMT applies only step 1: step2_epochs must be 0, got {step2_epochs} (the class tokens "
                "mix the modalities, so tau~ and the step-2 bound do not apply)"
            )
        super().__init__(
            num_classes,
            input_shapes,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            rho=rho,
            step1_epochs=step1_epochs,
            step2_epochs=0,
            init_integration=init_integration,
            noise_sigma=noise_sigma,
            pixel_normalization=pixel_normalization,
        )

    def on_fit_start(self) -> None:
        if self.trainer.max_epochs is None or self.trainer.max_epochs > self.step1_epochs:
            raise ValueError(
                f"CRMT-MMT applies only step 1: trainer.max_epochs ({self.trainer.max_epochs}) must not exceed "
                f"step1_epochs ({self.step1_epochs})"
            )
