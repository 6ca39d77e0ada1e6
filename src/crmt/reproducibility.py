"""What a run's numbers depend on besides its configuration, recorded with them (metrics.json, W&B config)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from lightning.pytorch import Trainer

_PACKAGES = ("torch", "lightning", "torchaudio", "av", "numpy", "crmt")


def run_context(trainer: Trainer) -> dict[str, Any]:
    """Seed, thread count, device, processes, precision and package versions of ``trainer``'s run.

    Same seed, same thread count and same versions on the same device type give bit-identical
    metrics and checkpoints; change any of them and results move within noise.
    """
    device = trainer.strategy.root_device
    return {
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "python": platform.python_version(),
        "versions": {**{name: _version(name) for name in _PACKAGES}, "torch": torch.__version__},
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
