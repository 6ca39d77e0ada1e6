"""A multi-modal transformer with hierarchical attention, trained from scratch (baselines.md §8).

Per modality: patch tokens with a learned position embedding and a class token, then
``stream_depth`` transformer layers of that modality alone (:class:`ModalityTransformer`). Then
``fusion_depth`` cross-modal layers over the concatenated sequences (:class:`CrossModalTransformer`),
whose per-modality class tokens feed the classification head. Inputs are those of the CNN
encoders: frame stacks (C, T, H, W), cut into 2-D patches per frame, and spectrograms (C, F, T),
cut into 2-D patches; a remainder that does not fill a whole patch is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    """embed_dim: token width; stream_depth / fusion_depth: per-modality / cross-modal layers;
    num_heads: attention heads (divides embed_dim); patch_size: side of the square patches;
    mlp_ratio: hidden width of each MLP over embed_dim; dropout: in attention, MLPs and embeddings."""

    embed_dim: int = 512
    stream_depth: int = 4
    fusion_depth: int = 4
    num_heads: int = 8
    patch_size: int = 16
    mlp_ratio: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be a positive multiple of num_heads ({self.num_heads})"
            )
        if self.stream_depth < 1 or self.fusion_depth < 1:
            raise ValueError(
                f"stream_depth and fusion_depth must be >= 1, got {self.stream_depth}, {self.fusion_depth}"
            )
        if self.patch_size < 1 or self.mlp_ratio < 1:
            raise ValueError(f"patch_size and mlp_ratio must be >= 1, got {self.patch_size}, {self.mlp_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def encoder_layers(config: TransformerConfig, depth: int) -> nn.TransformerEncoder:
    """``depth`` pre-norm transformer layers on (B, N, embed_dim) sequences."""
    layer = nn.TransformerEncoderLayer(
        config.embed_dim,
        config.num_heads,
        config.mlp_ratio * config.embed_dim,
        config.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class PatchEmbedding(nn.Module):
    """Inputs (B, C, F, T) -> (B, N, D) tokens of 2-D patches, or (B, C, T, H, W) -> (B, T * N, D) with
    per-frame patches; each token gets a learned position embedding (one per (frame, patch))."""

    def __init__(self, input_shape: Sequence[int], config: TransformerConfig) -> None:
        super().__init__()
        if len(input_shape) not in (3, 4):
            raise ValueError(
                f"input shape {list(input_shape)} is neither a spectrogram (C, F, T) nor a frame stack (C, T, H, W)"
            )
        patch = config.patch_size
        height, width = input_shape[-2:]
        if height < patch or width < patch:
            raise ValueError(f"patch_size {patch} exceeds the input's last two sides {height} x {width}")
        self.frames = input_shape[1] if len(input_shape) == 4 else 1
        self.num_tokens = self.frames * (height // patch) * (width // patch)
        self.projection = nn.Conv2d(input_shape[0], config.embed_dim, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(1, self.num_tokens, config.embed_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # frames: (B, C, T, H, W) -> (B * T, C, H, W)
            batch, channels, frames, height, width = x.shape
            x = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        tokens = self.projection(x).flatten(2).transpose(1, 2)  # (B * T, patches, D)
        return tokens.reshape(-1, self.num_tokens, tokens.shape[2]) + self.position


class ModalityTransformer(nn.Module):
    """One modality's stream: x (B, ...) -> tokens (B, 1 + N, D), the class token first."""

    def __init__(self, input_shape: Sequence[int], config: TransformerConfig) -> None:
        super().__init__()
        self.patches = PatchEmbedding(input_shape, config)
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.dropout = nn.Dropout(config.dropout)
        self.layers = encoder_layers(config, config.stream_depth)
        self.out_dim = config.embed_dim
        self.num_tokens = 1 + self.patches.num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x)
        tokens = torch.cat([self.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.layers(self.dropout(tokens))


class CrossModalTransformer(nn.Module):
    """Cross-modal layers over the concatenated token sequences [(B, N_m, D)] -> the class token of
    each modality after them (its first token), [(B, D)] in modality order."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.layers = encoder_layers(config, config.fusion_depth)
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, sequences: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        lengths = [sequence.shape[1] for sequence in sequences]
        tokens = self.norm(self.layers(torch.cat(list(sequences), dim=1)))
        return [part[:, 0] for part in torch.split(tokens, lengths, dim=1)]
