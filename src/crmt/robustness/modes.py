"""Context managers that put a model into evaluation state and restore it afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (batch norm uses its running statistics and stays unchanged); every
    submodule's own mode is restored on exit. Free for a model that is in evaluation mode already."""
    training = [module for module in model.modules() if module.training]
    if training:
        model.eval()
    try:
        yield model
    finally:
        for module in training:
            module.training = True


@contextmanager
def input_gradients() -> Iterator[None]:
    """Autograd on, inference mode off: input gradients work even inside Lightning's eval loops."""
    with torch.inference_mode(False), torch.enable_grad():
        yield
