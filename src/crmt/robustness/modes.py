"""Context managers that put a model into evaluation state and restore it afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (batch norm uses its running statistics and stays unchanged), restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def input_gradients() -> Iterator[None]:
    """Autograd on, inference mode off: input gradients work even inside Lightning's eval loops."""
    with torch.inference_mode(False), torch.enable_grad():
        yield
