"""Memory layout of the convolutional trunks: ``channels_last`` (NHWC), which tensor-core GPUs convolve
faster than the default NCHW; on a CPU it is usually slower (``make bench-scale`` measures both)."""

from __future__ import annotations

import torch
from torch import nn

from crmt.models.encoders import ResNet18Trunk

_HOOKED = "_channels_last_hook"


def _to_channels_last(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def use_channels_last(model: nn.Module) -> int:
    """Put every :class:`ResNet18Trunk` of ``model`` in channels_last layout: its 4-D parameters and
    buffers now, its (N, C, H, W) input at every forward (a forward pre-hook). Values are unchanged;
    calling it again changes nothing. Returns the number of trunks."""
    trunks = [module for module in model.modules() if isinstance(module, ResNet18Trunk)]
    for trunk in trunks:
        trunk.to(memory_format=torch.channels_last)
        if not hasattr(trunk, _HOOKED):
            setattr(trunk, _HOOKED, trunk.register_forward_pre_hook(_to_channels_last))
    return len(trunks)
