"""Sound upper bounds of the l2 Lipschitz constant of network layers (method.md §4, the alternative).

A network's bound is the product, along the network, of a bound per layer (each encoder of
:mod:`crmt.models.encoders` composes its own from these):

- convolution followed by eval-mode batch norm: batch norm is an affine map with a per-channel
  scale, folded into the kernel; the folded convolution's operator norm (its largest singular
  value) is bounded by that of the circular convolution on a grid that holds the zero-padded
  input, which is computed exactly by a 2-D FFT (the operator is block-diagonal in frequency;
  Sedghi, Gupta and Long, ICLR 2019). Striding only drops outputs, which cannot raise the norm;
- ReLU: 1; max pooling with kernel k and stride s: ceil(k_h / s_h) * ceil(k_w / s_w) windows
  overlap at most, so sqrt of that; global average pooling over n positions: 1 / sqrt(n);
- a residual block ``relu(branch(x) + shortcut(x))``: Lip(branch) + Lip(shortcut), with
  Lip(identity) = 1.

The resulting constant is a true upper bound (not an estimate like the paper's tau~), so radii
computed from it hold for every perturbation; they are small because the product is loose.
Unlike power iteration, which approaches the norm from below, the FFT bound is never too low.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


_FREQUENCY_CHUNK = 4096
"""Frequencies whose (C_out, C_in) matrices are reduced at once, to bound memory."""


def conv_operator_norm_bound(weight: torch.Tensor, input_size: Sequence[int], padding: Sequence[int]) -> float:
    """Upper bound of the l2 operator norm of a zero-padded 2-D convolution of any stride.

    weight: (C_out, C_in, k_h, k_w); input_size: (H, W) of the input; padding: (p_h, p_w).
    Exact for the circular convolution on the (H + 2 p_h) x (W + 2 p_w) grid, which contains
    the zero-padded one as a restriction. The kernel is real, so the matrix at frequency -f is the
    conjugate of that at f, with the same singular values: half the spectrum (``rfft2``) suffices.
    """
    kernel_h, kernel_w = weight.shape[-2:]
    grid = (max(input_size[0] + 2 * padding[0], kernel_h), max(input_size[1] + 2 * padding[1], kernel_w))
    spectrum = torch.fft.rfft2(weight.detach().double(), s=grid)
    matrices = spectrum.permute(2, 3, 0, 1).reshape(-1, weight.shape[0], weight.shape[1])
    norm = max(
        torch.linalg.matrix_norm(matrices[start : start + _FREQUENCY_CHUNK], ord=2).max().item()
        for start in range(0, matrices.shape[0], _FREQUENCY_CHUNK)
    )
    return float(norm)


def folded_kernel(conv: nn.Conv2d, norm: nn.BatchNorm2d | None) -> torch.Tensor:
    """The kernel of ``norm(conv(x))`` without its bias: eval-mode batch norm's scale folded in."""
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise NotImplementedError(f"only plain convolutions are bounded, got groups={conv.groups}, dilation={conv.dilation}")
    weight = conv.weight.detach().double()
    if norm is None:
        return weight
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double()
    return weight * scale[:, None, None, None]


def max_pool_bound(pool: nn.MaxPool2d) -> float:
    """sqrt of the largest number of pooling windows that share one input element."""
    kernel = _pair(pool.kernel_size)
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    return math.sqrt(math.ceil(kernel[0] / stride[0]) * math.ceil(kernel[1] / stride[1]))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class ConvInputSizes:
    """Records the spatial input size of every convolution of a module during one forward pass."""

    def __init__(self, module: nn.Module, sample: torch.Tensor) -> None:
        self.sizes: dict[nn.Conv2d, tuple[int, int]] = {}
        handles = [
            conv.register_forward_hook(self._record) for conv in module.modules() if isinstance(conv, nn.Conv2d)
        ]
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                self.output_shape = tuple(module(sample).shape)
        finally:
            module.train(was_training)
            for handle in handles:
                handle.remove()

    def _record(self, conv: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.sizes[conv] = tuple(args[0].shape[-2:])


def conv_bn_bound(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, sizes: ConvInputSizes) -> float:
    """Upper bound of ``norm(conv(x))``'s operator norm at the input size ``sizes`` recorded for ``conv``."""
    return conv_operator_norm_bound(folded_kernel(conv, norm), sizes.sizes[conv], _pair(conv.padding))
