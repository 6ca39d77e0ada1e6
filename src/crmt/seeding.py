"""Per-step random generators: the same stream on every DDP rank for the same optimiser step."""

from __future__ import annotations

import torch

_SEED_MODULUS = 2**63


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded from (``seed``, ``step``).

    Every rank that asks for the same (seed, step) gets the same stream, so random draws that
    change parameters (mixup's lambda and permutation, OGM-GE's gradient noise) stay identical
    across DDP replicas, and a run resumed at ``step`` repeats the uninterrupted one.
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got {seed} and {step}")
    return torch.Generator(device=device).manual_seed((seed * 2**32 + step) % _SEED_MODULUS)
