"""Context managers: evaluation state restored afterwards, input gradients in any loop, float32 math, and float32
without TF32 for the logits certificates are computed from."""

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


@contextmanager
def float32_math() -> Iterator[None]:
    """Autocast off on every device type, so certificates (tau~, radii, step 2's bound) and attacks'
    projections run in float32 even inside a ``bf16-mixed`` or ``16-mixed`` training or evaluation step."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


@contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 math (:func:`float32_math`) with TensorFloat-32 off for convolutions and matrix products: on GPUs that
    have it (Ampere and later) cuDNN uses TF32 by default, whose 10-bit mantissa would put errors of about 1e-3 of
    their scale into logits and defeat the rounding margin of sound radii
    (:data:`~crmt.robustness.certify.ROUNDING_MARGIN`). The previous settings are restored on exit."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with float32_math():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
