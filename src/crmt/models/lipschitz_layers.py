"""1-Lipschitz layers by construction (l2): AOL-rescaled convolutions, MaxMin, norm pooling.

**AOL** (almost-orthogonal layers; Prach and Lampert, ECCV 2022). For a matrix P with columns p_i let
``s_i = sum_j |(P^T P)_ij|`` and ``D = diag(d)`` with ``d_i <= s_i^(-1/2)``. Then ``||P D||_2 <= 1``.

*Proof.* With ``M = P^T P`` and any v, using ``2 |a b| <= a^2 + b^2`` and the symmetry of M::

    ||P D v||^2 = sum_ij M_ij d_i v_i d_j v_j <= sum_ij |M_ij| (d_i^2 v_i^2 + d_j^2 v_j^2) / 2
                = sum_i d_i^2 v_i^2 s_i <= ||v||^2.

More generally, for any d, ``||P D||_2 <= max_i d_i sqrt(s_i)``: write ``D = D_0 Lambda`` with
``D_0 = diag(s^(-1/2))`` and ``Lambda = diag(d_i sqrt(s_i))``. :meth:`AOLConv2d.lipschitz_upper_bound`
evaluates this in float64 on the float32 ``d`` the forward pass used, so float32 rounding of ``d`` is
accounted for (the bound is 1 up to ~1e-7).

*Convolutions.* A zero-padded convolution of kernel K (C_out, C_in, k, k), stride s, is
``R o C o E``: E embeds the input into a (H + 2p) x (W + 2p) grid (an isometry, zero padding), C is the
stride-1 circular convolution on that grid and R keeps the strided outputs that the zero-padded
convolution computes (a coordinate restriction, norm <= 1). The input-channel scaling D commutes with
E, so ``||R C E D|| <= ||C D||``. The entries of ``C^T C`` in the row of input channel c at position u
are ``G[c, c', delta] = sum_{o, w} K[o, c, w] K[o, c', w + delta]`` at position ``u + delta`` (summed
over the shifts that alias, on a grid smaller than 2k - 1), so the row sums of ``|C^T C|`` are at most
``s_c = sum_{c', delta} |G[c, c', delta]|``, the same for every position u: the theorem applies to C
with one ``d_c`` per input channel.

**MaxMin** (GroupSort of group size 2; Anil, Lucas and Grosse, ICML 2019): sorts each pair of channels
(the first half against the second half). On each region where the order is fixed it is a permutation,
and it is continuous, so it is 1-Lipschitz in l2 (and preserves gradient norms, unlike ReLU).

**Norm pooling**: ``sum_i x_i / sqrt(n)`` over n positions is 1-Lipschitz, by Cauchy-Schwarz:
``||sum_i x_i|| <= sum_i ||x_i|| <= sqrt(n) (sum_i ||x_i||^2)^(1/2)``.

A composition of 1-Lipschitz maps is 1-Lipschitz; biases do not change a Lipschitz constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

AOL_FLOOR = 1e-12
"""Added to s_i before ``s_i^(-1/2)``: a zero column gets a large finite d_i (its column is zero
anyway), and a larger s only makes d smaller, which keeps the bound."""


def kernel_gram(weight: torch.Tensor) -> torch.Tensor:
    """G[c, c', delta] of a kernel (C_out, C_in, k_h, k_w): (C_in, C_in, 2 k_h - 1, 2 k_w - 1), every shift."""
    kernel_h, kernel_w = weight.shape[-2:]
    per_input = weight.transpose(0, 1)  # (C_in, C_out, k_h, k_w)
    return F.conv2d(per_input, per_input, padding=(kernel_h - 1, kernel_w - 1))


def aol_conv_row_sums(weight: torch.Tensor) -> torch.Tensor:
    """s_c = sum_{c', delta} |G[c, c', delta]| of a kernel (C_out, C_in, k_h, k_w): (C_in,)."""
    return kernel_gram(weight).abs().sum(dim=(1, 2, 3))


def aol_scale(row_sums: torch.Tensor) -> torch.Tensor:
    """d = (s + floor)^(-1/2): the AOL rescaling of every input channel."""
    return torch.rsqrt(row_sums + AOL_FLOOR)


def scaled_bound(scale: torch.Tensor, row_sums: torch.Tensor) -> float:
    """max_i d_i sqrt(s_i) in float64: the operator-norm bound of ``P diag(d)`` (this module's docstring)."""
    return float((scale.detach().double() * row_sums.detach().double().sqrt()).max())


class AOLConv2d(nn.Conv2d):
    """A zero-padded 2-D convolution whose kernel's input channels are rescaled by AOL: ``||conv|| <= 1``.

    The rescaling is recomputed from the raw kernel in every forward pass, so the bound holds after any
    optimiser step. Input (B, C_in, H, W) -> (B, C_out, H', W') as :class:`torch.nn.Conv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=True)
        nn.init.orthogonal_(self.weight)
        nn.init.zeros_(self.bias)

    def scaled_weight(self) -> torch.Tensor:
        """The kernel with input channel c scaled by d_c: (C_out, C_in, k, k)."""
        return self.weight * aol_scale(aol_conv_row_sums(self.weight))[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.scaled_weight(), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def lipschitz_upper_bound(self) -> float:
        """max_c d_c sqrt(s_c) with the float32 d of the forward pass and s in float64 (about 1)."""
        return scaled_bound(aol_scale(aol_conv_row_sums(self.weight)), aol_conv_row_sums(self.weight.double()))


class MaxMin(nn.Module):
    """(B, 2C, ...) -> (B, 2C, ...): [max(x_a, x_b), min(x_a, x_b)] of the two channel halves x_a, x_b."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"MaxMin needs an even number of channels, got {x.shape[1]}")
        first, second = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(first, second), torch.minimum(first, second)], dim=1)


def norm_pool(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """sum over ``dims`` / sqrt(number of positions summed): 1-Lipschitz pooling."""
    positions = math.prod(x.shape[d] for d in dims)
    return x.sum(dim=dims) / math.sqrt(positions)
