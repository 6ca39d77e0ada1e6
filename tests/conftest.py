"""Shared fixtures: W&B offline and quiet, a small in-memory audio-visual data module, trained tiny models."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from crmt.strategies import CRMTJointTraining, JointTraining
from helpers import TensorAVDataModule, fit_tiny

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# On a (virtualised) Xeon with AVX-512 and AMX, oneDNN's AVX-512 kernels in torch 2.14.1 returned NaN weights after
# bf16-mixed training of the tiny test encoders in some processes and not in others (tests/test_mixed_precision.py,
# at commit 49d956c too); capped at AVX2 they never did (11 of 11 runs) and float32 ran as fast: docs/scaling.md.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


@pytest.fixture
def tensor_data() -> TensorAVDataModule:
    return TensorAVDataModule()


@pytest.fixture(scope="session")
def data() -> TensorAVDataModule:
    """48 training and 30 validation samples of 3 classes, shared by the robustness tests."""
    return TensorAVDataModule(train_size=48, val_size=30)


@pytest.fixture(scope="session")
def trained_jt(data) -> JointTraining:
    """JT (width 4) trained for 10 epochs on ``data``, in eval mode; tests must leave it unchanged."""
    seed_everything(0)
    model = JointTraining(3, data.input_shapes, encoder_width=4, optimizer=partial(torch.optim.Adam, lr=1e-2))
    return fit_tiny(model, data, epochs=10)


@pytest.fixture(scope="session")
def trained_crmt(data) -> CRMTJointTraining:
    """CRMT-JT (width 4), 8 epochs of step 1 and 2 of step 2 on ``data``, in eval mode."""
    seed_everything(0)
    model = CRMTJointTraining(
        3, data.input_shapes, encoder_width=4, step1_epochs=8, step2_epochs=2,
        optimizer=partial(torch.optim.Adam, lr=1e-2), step2_optimizer=partial(torch.optim.Adam, lr=5e-2),
    )
    return fit_tiny(model, data, epochs=10)
