"""ResNet18 encoders: a 2D ResNet18 for spectrograms and a per-frame 2D ResNet18 for frame stacks.

``width`` is the channel count of the first stage (64 in the paper); the feature
dimension is ``8 * width`` (512 in the paper). :func:`build_encoder` picks the encoder
from the shape of one input: (C, F, T) is a spectrogram, (C, T, H, W) a stack of frames
(RGB video, or 2-channel optical flow), and from its kind: ``resnet18`` (the paper's, the
default) or ``lipschitz`` (1-Lipschitz by construction, :mod:`crmt.models.lipschitz_encoders`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from crmt.models.frames import per_frame_features
from crmt.models.layer_bounds import ConvInputSizes, conv_bn_bound, max_pool_bound
from crmt.models.lipschitz_encoders import LipschitzFrameEncoder, LipschitzSpectrogramEncoder

EncoderKind = Literal["resnet18", "lipschitz"]
"""The encoders a model can be built with (``encoder`` of :class:`crmt.strategies.base.MultiModalModule`)."""


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))

    def lipschitz_upper_bound(self, sizes: ConvInputSizes) -> float:
        """Lip(branch) + Lip(shortcut) at the convolution input sizes recorded in ``sizes``."""
        branch = conv_bn_bound(self.conv1, self.bn1, sizes) * conv_bn_bound(self.conv2, self.bn2, sizes)
        if isinstance(self.shortcut, nn.Identity):
            return branch + 1.0
        conv, norm = self.shortcut[0], self.shortcut[1]
        return branch + conv_bn_bound(conv, norm, sizes)


class ResNet18Trunk(nn.Module):
    """ResNet18 up to the last stage: (N, C_in, H, W) -> (N, 8 * width, H / 32, W / 32)."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"encoder width must be >= 1, got {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            stages.append(nn.Sequential(BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.out_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def lipschitz_upper_bound(self, frame_shape: Sequence[int]) -> tuple[float, tuple[int, ...]]:
        """Upper bound of the trunk's Lipschitz constant on inputs (C, H, W), and its output shape (1, C', h, w)."""
        sizes = ConvInputSizes(self, torch.zeros(1, *frame_shape, device=next(self.parameters()).device))
        conv, norm, _, pool = self.stem
        bound = conv_bn_bound(conv, norm, sizes) * max_pool_bound(pool)
        for stage in self.stages:
            for block in stage:
                bound *= block.lipschitz_upper_bound(sizes)
        return bound, sizes.output_shape


class SpectrogramEncoder(nn.Module):
    """Spectrogram encoder: (B, C, F, T_a) -> (B, 8 * width), global average pooled."""

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels, width)
        self.out_dim = self.trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def lipschitz_upper_bound(self, input_shape: Sequence[int]) -> float:
        """Upper bound of the l2 Lipschitz constant on inputs (C, F, T_a): the trunk's, times
        1 / sqrt(n) of the average pooling over its n output positions (batch norm in eval mode)."""
        bound, output_shape = self.trunk.lipschitz_upper_bound(input_shape)
        return bound / math.sqrt(output_shape[2] * output_shape[3])


class FrameEncoder(nn.Module):
    """Frame encoder: (B, C, T, H, W) -> (B, 8 * width); a 2D ResNet18 per frame, pooled over time and space."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels, width)
        self.out_dim = self.trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame_features(self.trunk, x).mean(dim=(1, 3))

    def lipschitz_upper_bound(self, input_shape: Sequence[int]) -> float:
        """Upper bound of the l2 Lipschitz constant on inputs (C, T, H, W): the per-frame trunk's, times
        1 / sqrt(n) of the average pooling over its n outputs (T frames x positions; batch norm in eval mode)."""
        channels, frames, height, width = input_shape
        bound, output_shape = self.trunk.lipschitz_upper_bound((channels, height, width))
        return bound / math.sqrt(frames * output_shape[2] * output_shape[3])


def build_encoder(input_shape: Sequence[int], width: int = 64, kind: EncoderKind = "resnet18") -> nn.Module:
    """The encoder of ``kind`` for inputs of ``input_shape`` (one sample, no batch dimension).

    (C, F, T) -> a spectrogram encoder; (C, T, H, W) -> a frame encoder. ``resnet18``:
    :class:`SpectrogramEncoder`, :class:`FrameEncoder`; ``lipschitz``: their 1-Lipschitz counterparts.
    """
    encoders = {
        "resnet18": (SpectrogramEncoder, FrameEncoder),
        "lipschitz": (LipschitzSpectrogramEncoder, LipschitzFrameEncoder),
    }
    if kind not in encoders:
        raise ValueError(f"unknown encoder {kind!r}; expected one of {sorted(encoders)}")
    spectrogram, frames = encoders[kind]
    if len(input_shape) == 3:
        return spectrogram(input_shape[0], width)
    if len(input_shape) == 4:
        return frames(input_shape[0], width)
    raise ValueError(
        f"input shape {list(input_shape)} is neither a spectrogram (C, F, T) nor a frame stack (C, T, H, W)"
    )
