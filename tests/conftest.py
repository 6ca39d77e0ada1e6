"""Shared fixtures: W&B offline and quiet, a small in-memory audio-visual data module."""

from __future__ import annotations

import os

import pytest

from helpers import TensorAVDataModule

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tensor_data() -> TensorAVDataModule:
    return TensorAVDataModule()
