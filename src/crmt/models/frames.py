"""Frame stacks through a 2-D trunk, one frame at a time (the frame encoders of :mod:`crmt.models.encoders` and
:mod:`crmt.models.lipschitz_encoders`)."""

from __future__ import annotations

import torch
from torch import nn


def per_frame_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) frames -> (B, T, C', h * w): each frame through ``trunk`` ((N, C, H, W) -> (N, C', h, w))."""
    batch, channels, frames, height, width = x.shape
    features = trunk(x.transpose(1, 2).reshape(batch * frames, channels, height, width))
    return features.reshape(batch, frames, features.shape[1], -1)
