"""Test helpers: a small in-memory audio-visual data module with the clip data modules' batch layout."""

from __future__ import annotations

import math
import os

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset


class TensorAVDataset(Dataset):
    """Class-dependent (the same class means in every split) Gaussian visual (3, T, H, W) and audio (1, F, T_a) tensors, with dataset indices."""

    def __init__(self, size: int, num_classes: int, seed: int) -> None:
        class_generator = torch.Generator().manual_seed(0)
        visual_means = torch.randn(num_classes, 3, 1, 1, 1, generator=class_generator)
        audio_means = torch.randn(num_classes, 1, 12, 1, generator=class_generator)
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % num_classes
        self.visual = visual_means[self.labels] + torch.randn(size, 3, 2, 16, 16, generator=generator)
        self.audio = audio_means[self.labels] + torch.randn(size, 1, 12, 16, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "visual": self.visual[index],
            "audio": self.audio[index],
            "label": self.labels[index],
            "index": torch.tensor(index),
        }


class TensorAVDataModule(LightningDataModule):
    """In-memory stand-in for a clip data module (same batch layout), for mechanism tests."""

    input_shapes = {"visual": [3, 2, 16, 16], "audio": [1, 12, 16]}

    def __init__(self, num_classes: int = 3, train_size: int = 24, val_size: int = 12, batch_size: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.train_set = TensorAVDataset(train_size, num_classes, seed=1)
        self.val_set = TensorAVDataset(val_size, num_classes, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def subprocess_environment(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m crmt`` subprocess: offline W&B and this process's variables, except
    WANDB_SERVICE, which wandb sets when a test ran W&B in this process: a child would attach to this
    process's W&B service, where a run that a killed child left open keeps its id "in use" for a resume."""
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "WANDB_MODE": "offline", **extra}


TINY_SMOOTHING = {"n0": 8, "n": 64, "batch": 64, "samples": 2}
"""Randomized-smoothing settings that keep the report of a test's CLI run cheap and still smooth end to end
(experiments/defaults.yaml certifies 16 clips with 64 + 1000 draws in each of 3 scopes)."""

TINY_SMOOTHING_ARGS = [
    f"--report.settings.smoothing.{key}={value}" for key, value in TINY_SMOOTHING.items()
]
"""``TINY_SMOOTHING`` as command-line overrides for every test that runs ``crmt fit`` or ``crmt test`` with
experiments/defaults.yaml (the ``report`` callback's settings)."""


def make_trainer(max_epochs: int, tmp_path=None, callbacks=(), **kwargs) -> Trainer:
    """A CPU Trainer with no logger, progress bar or sanity check; checkpoints only with a ModelCheckpoint callback."""
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        **kwargs,
    )


def fit_tiny(model: LightningModule, data: TensorAVDataModule, epochs: int, **trainer_kwargs) -> LightningModule:
    """Train ``model`` on ``data`` on the CPU with no logger, progress bar or checkpoints; returns it in eval mode."""
    make_trainer(epochs, **trainer_kwargs).fit(model, datamodule=data)
    return model.eval()


def validation_batch(data: TensorAVDataModule, size: int = 30) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The first ``size`` validation samples as (inputs in modality order, labels)."""
    batch = next(iter(DataLoader(data.val_set, batch_size=size)))
    return [batch["visual"], batch["audio"]], batch["label"]


class SignalAt(Callback):
    """Send this process a signal after a given training batch: ``$CRMT_TEST_SIGNAL`` = ``epoch:batch:signum``.

    For the preemption tests, which run ``python -m crmt fit`` with ``--trainer.callbacks+=helpers.SignalAt``.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        epoch, batch_index, signum = (int(part) for part in os.environ["CRMT_TEST_SIGNAL"].split(":"))
        if trainer.current_epoch == epoch and batch_idx == batch_index:
            os.kill(os.getpid(), signum)


class StateAtValidationEnd(Callback):
    """A copy of the module's state dict at the end of the latest validation epoch: the weights its logged
    validation metrics were computed with (CRMT's step-2 selection may change a^(m) afterwards)."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.state = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}


@torch.no_grad()
def forward_accuracy(model: LightningModule, loader: DataLoader) -> float:
    """Fraction of the loader's samples whose largest eval-mode logit is the label."""
    model.eval()
    correct = [model(model.inputs(batch)).logits.argmax(dim=1) == batch["label"] for batch in loader]
    return torch.cat(correct).float().mean().item()


def fused_logits_by_hand(scores: list[list[float]], integration: list[list[float]], bias: list[float]) -> list[float]:
    """h_k = sum_m a_k^(m) s_k^(m) + b_k for one sample; scores and integration are [m][k] lists."""
    return [sum(a[k] * s[k] for a, s in zip(integration, scores, strict=True)) + b for k, b in enumerate(bias)]


def orthogonal_radius_by_hand(
    scores: list[list[float]], integration: list[list[float]], bias: list[float], tau: list[list[float]], label: int
) -> float:
    """Theorem 3.5 for one sample with plain arithmetic: 0 if misclassified, else
    min_{j != y} (h_y - h_j) / sqrt(sum_m (|a_y^(m)| tau_y^(m) + |a_j^(m)| tau_j^(m))^2);
    scores, integration and tau are [m][k] lists."""
    logits = fused_logits_by_hand(scores, integration, bias)
    classes = range(len(bias))
    if max(classes, key=lambda k: logits[k]) != label:
        return 0.0
    bounds = []
    for j in classes:
        if j != label:
            pair = [abs(a[label]) * t[label] + abs(a[j]) * t[j] for a, t in zip(integration, tau, strict=True)]
            bounds.append((logits[label] - logits[j]) / math.sqrt(sum(value * value for value in pair)))
    return min(bounds)


@torch.no_grad()
def orthogonal_validation_by_hand(model: LightningModule, loader: DataLoader) -> tuple[float, float]:
    """(accuracy, mean certified radius) of an orthogonal-head model on ``loader``, every sample scored
    by s^(m) = W~^(m) phi^(m)(x^(m)) and certified by :func:`orthogonal_radius_by_hand` with ``model.tau``."""
    model.eval()
    weights = model.head.modality_weights()
    integration, bias, tau = model.head.integration.tolist(), model.head.bias.tolist(), model.tau.tolist()
    correct, radii = [], []
    for batch in loader:
        scores = [model.encode_modality(m, x) @ weights[m].T for m, x in enumerate(model.inputs(batch))]
        for i, label in enumerate(batch["label"].tolist()):
            sample = [s[i].tolist() for s in scores]
            logits = fused_logits_by_hand(sample, integration, bias)
            correct.append(max(range(len(bias)), key=lambda k: logits[k]) == label)
            radii.append(orthogonal_radius_by_hand(sample, integration, bias, tau, label))
    return sum(correct) / len(correct), sum(radii) / len(radii)


def tau_by_hand(model: LightningModule, dataset: Dataset) -> torch.Tensor:
    """tau~ (M, K) recomputed independently: max over the samples of ``dataset`` of ||d s_k^(m)(x) / d x^(m)||_2,
    one sample and one class at a time, in evaluation mode, with plain autograd (method.md §4)."""
    model.eval()
    weights = [w.detach() for w in model.head.modality_weights()]
    tau = torch.zeros(len(model.modalities), model.num_classes)
    for i in range(len(dataset)):
        sample = dataset[i]
        for m, name in enumerate(model.modalities):
            for k in range(model.num_classes):
                x = sample[name].unsqueeze(0).requires_grad_(True)
                (gradient,) = torch.autograd.grad((model.encode_modality(m, x) @ weights[m][k]).sum(), x)
                tau[m, k] = max(tau[m, k], gradient.norm())
    return tau
