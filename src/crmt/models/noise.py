"""Gaussian data augmentation on the normalised inputs: the training a smoothed classifier needs.

A model certified by randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019) must have
learnt to classify x + N(0, sigma^2 I). :class:`GaussianInputNoise` adds that noise in training
mode only, like dropout, so evaluation, attacks and certificates see the clean input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["GaussianInputNoise", "modality_sigmas"]


class GaussianInputNoise(nn.Module):
    """x -> x + sigma * eps, eps ~ N(0, I) drawn from torch's global RNG, in training mode with sigma > 0;
    x unchanged (and nothing drawn) otherwise. Any shape, e.g. (B, 3, T, H, W) or (B, 1, F, T_a)."""

    def __init__(self, sigma: float = 0.0) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return inputs + self.sigma * torch.randn_like(inputs)
        return inputs

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def modality_sigmas(noise_sigma: float | Mapping[str, float], modalities: Sequence[str]) -> dict[str, float]:
    """The noise standard deviation of every modality, in ``modalities`` order.

    ``noise_sigma``: one sigma for every modality (joint), or modality name -> sigma (names left
    out get 0). ValueError, naming ``noise_sigma``, for an unknown name or a negative or non-finite sigma.
    """
    if isinstance(noise_sigma, Mapping):
        unknown = sorted(set(noise_sigma) - set(modalities))
        if unknown:
            raise ValueError(
                f"noise_sigma names unknown modalities {unknown}; the model's modalities are {list(modalities)}"
            )
        sigmas = {name: float(noise_sigma.get(name, 0.0)) for name in modalities}
    else:
        sigmas = dict.fromkeys(modalities, float(noise_sigma))
    invalid = {name: sigma for name, sigma in sigmas.items() if not (math.isfinite(sigma) and sigma >= 0)}
    if invalid:
        raise ValueError(f"noise_sigma must be finite and >= 0 for every modality, got {invalid}")
    return sigmas
