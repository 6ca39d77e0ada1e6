"""Encoders that are 1-Lipschitz (l2) by construction, from :mod:`crmt.models.lipschitz_layers`.

With them, the paper's pair constants become sound: if phi^(m) is L_m-Lipschitz, every tau~_k^(m) of the
orthogonal head is at most L_m (the rows of W~^(m) have norm 1), and the JT head's pair constant is at most
``L_m ||W_y^(m) - W_j^(m)||`` (:func:`crmt.robustness.certificates.sound_pair_lipschitz`). CRMT's step 2
then enlarges a guaranteed radius (:class:`crmt.strategies.crmt.CRMTJointTraining`).

The trunk follows the ResNet18's stages with four AOL convolutions (channels ``width``, 2, 4, 8 x ``width``),
each followed by MaxMin; all four have stride 2 (output H / 16, W / 16), so that at the paper's 224 x 224 frames
it costs about what the ResNet18 does (whose stem alone downsamples by 4). Features are the norm pooling of the
last map (``8 * width`` of them, as the ResNet18's). Inputs (C, F, T) are spectrograms, (C, T, H, W) frame stacks
(each frame through the trunk, pooled over frames and positions), as in :mod:`crmt.models.encoders`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from crmt.models.frames import per_frame_features
from crmt.models.lipschitz_layers import AOLConv2d, MaxMin, norm_pool


class LipschitzTrunk(nn.Module):
    """(N, C_in, H, W) -> (N, 8 * width, H / 16, W / 16), 1-Lipschitz: AOL convolutions and MaxMin."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"encoder width must be >= 1, got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width, 8 * width):
            if out_channels % 2:
                raise ValueError(f"the Lipschitz encoder's MaxMin needs even channel counts; width {width} gives {out_channels}")
            layers += [AOLConv2d(channels, out_channels, 3, stride=2), MaxMin()]
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def lipschitz_upper_bound(self) -> float:
        """The product of the AOL convolutions' bounds (MaxMin: 1): 1 up to float32 rounding of the scales."""
        return math.prod(layer.lipschitz_upper_bound() for layer in self.layers if isinstance(layer, AOLConv2d))


class LipschitzEncoder(nn.Module):
    """A :class:`LipschitzTrunk` and its feature size; subclasses pool its output. 1-Lipschitz by construction."""

    bounded_by_construction = True

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.trunk = LipschitzTrunk(in_channels, width)
        self.out_dim = self.trunk.out_dim

    def lipschitz_upper_bound(self, input_shape: Sequence[int]) -> float:
        """The trunk's bound (norm pooling: 1), whatever the input shape."""
        return self.trunk.lipschitz_upper_bound()


class LipschitzSpectrogramEncoder(LipschitzEncoder):
    """Spectrogram encoder: (B, C, F, T_a) -> (B, 8 * width), norm-pooled over positions; 1-Lipschitz."""

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__(in_channels, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_pool(self.trunk(x), (2, 3))


class LipschitzFrameEncoder(LipschitzEncoder):
    """Frame encoder: (B, C, T, H, W) -> (B, 8 * width), each frame through the trunk, norm-pooled over frames
    and positions; 1-Lipschitz (the per-frame map is block-diagonal over frames: its norm is the trunk's)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(in_channels, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_pool(per_frame_features(self.trunk, x), (1, 3))
