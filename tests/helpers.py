"""Test helpers: a small in-memory audio-visual data module with the clip data modules' batch layout."""

from __future__ import annotations

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
