"""Gradient Blending, online and paper-faithful (Wang, Tran, Feiszli, CVPR 2020; baselines.md §2.3, variant A).

Besides the concat head, each modality gets its own uni-modal linear head. Training minimises
sum_k w_k CE(logits_k, y) over the branches k (one per modality, then the fused one); only the
concat head is used at evaluation. A deterministic ``holdout_fraction`` of the training set, V,
is excluded from this loss. Every ``super_epoch`` epochs, before the epoch's training, the
weights are re-estimated: each branch is forked (deep copies of its encoders and head, a fresh
optimiser) and trained alone, by a Lightning Trainer of its own (:class:`BranchFit`), for
``estimation_epochs`` epochs on the rest of the training set, whose batches reach it as every
strategy's do: from a data module (:class:`ForkData`) with the run's data module's transfer hooks;
its mean losses on V and on an equally large probe of the training part, before and after,
give the generalisation gain dG = L^V_N - L^V_{N+n} and the overfitting change
dO = O_{N+n} - O_N with O = L^V - L^T, and w_k = max(dG_k, 0) / (dO_k^2 + epsilon), normalised
to sum 1. The weights are buffers, so they are checkpointed. V is chosen when training starts.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader, Subset

from crmt.robustness.modes import eval_mode
from crmt.strategies.base import Batch
from crmt.strategies.jt import JointTraining


def blend_weights(generalisation: torch.Tensor, overfitting: torch.Tensor, epsilon: float) -> torch.Tensor | None:
    """w_k = max(dG_k, 0) / (dO_k^2 + epsilon), normalised to sum 1; ``None`` when every dG_k <= 0.

    generalisation: dG (branches,); overfitting: dO (branches,).
    """
    raw = generalisation.clamp_min(0) / (overfitting.pow(2) + epsilon)
    total = raw.sum()
    if total <= 0:
        return None
    return raw / total


class UniModalBranch(nn.Module):
    """Modality m's encoder and uni-modal head: inputs (in model order) -> logits (B, K)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, m: int) -> None:
        super().__init__()
        self.encoder, self.head, self.m = encoder, head, m

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(inputs[self.m]))


class MultiModalBranch(nn.Module):
    """Every encoder and the concat head: inputs (in model order) -> fused logits (B, K)."""

    def __init__(self, encoders: nn.ModuleList, head: nn.Module) -> None:
        super().__init__()
        self.encoders, self.head = encoders, head

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head([encoder(x) for encoder, x in zip(self.encoders, inputs, strict=True)]).logits


class BranchFit(LightningModule):
    """A forked branch as a LightningModule: minimise CE(branch(x), y) with a fresh optimiser.

    ``branch`` maps inputs in ``modalities`` order to logits (B, K). Its batches come as every strategy's
    do: from a data module (:class:`ForkData`) whose batch-transfer hooks its Trainer runs.
    """

    def __init__(self, branch: nn.Module, modalities: Sequence[str], optimizer: OptimizerCallable) -> None:
        super().__init__()
        self.branch, self.modalities, self.optimizer_factory = branch, list(modalities), optimizer

    def training_step(self, batch: Batch | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every clip of the batch failed to decode and was skipped
            return None
        return F.cross_entropy(self.branch([batch[name] for name in self.modalities]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.branch.parameters())


class ForkData(LightningDataModule):
    """What a fork trains on, as a data module: ``loader`` (some of the run's training samples, through the
    run's dataset and collate) and the batch-transfer hooks of the run's data module ``source``, so that the
    fork's Trainer moves and prepares each batch (e.g. normalises uint8 pixels on the device) as the run's
    Trainer does with ``source``'s own batches. Without a ``source`` (a run fitted on bare loaders), Lightning's
    default transfer."""

    def __init__(self, loader: DataLoader, source: LightningDataModule | None) -> None:
        super().__init__()
        self.loader, self.source = loader, source

    def train_dataloader(self) -> DataLoader:
        return self.loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        hooks = self.source if self.source is not None else super()
        return hooks.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        hooks = self.source if self.source is not None else super()
        return hooks.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        hooks = self.source if self.source is not None else super()
        return hooks.on_after_batch_transfer(batch, dataloader_idx)


def fit_alone(module: LightningModule, data: LightningDataModule, epochs: int, device: torch.device) -> None:
    """Train ``module`` on ``data`` for ``epochs`` epochs with a Trainer of its own on ``device``
    (one process, whatever launched the calling run: no logger, checkpoints, progress bar or info messages)."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        _fork_trainer(epochs, device).fit(module, datamodule=data)
    finally:
        lightning_log.setLevel(level)


def _fork_trainer(epochs: int, device: torch.device) -> Trainer:
    return Trainer(
        strategy=SingleDeviceStrategy(device),
        plugins=[LightningEnvironment()],
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


class GradientBlending(JointTraining):
    """JT with uni-modal heads and the online G-Blend loss weights (see the module docstring).

    Args (besides :class:`MultiModalModule`'s):
        super_epoch: the weights are re-estimated before epochs 0, n, 2n, ... (n = 10 in BalanceBenchmark).
        estimation_epochs: epochs each forked branch trains per estimate (default: super_epoch, the paper).
        holdout_fraction: fraction of the training set held out as V (0.1).
        holdout_seed: seeds the choice of V and the forks' data order.
        epsilon: added to dO^2 (guards dO ~ 0).
    """

    def __init__(
        self,
        *,
        super_epoch: int = 10,
        estimation_epochs: int | None = None,
        holdout_fraction: float = 0.1,
        holdout_seed: int = 0,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        if super_epoch < 1:
            raise ValueError(f"super_epoch must be >= 1, got {super_epoch}")
        if estimation_epochs is not None and estimation_epochs < 1:
            raise ValueError(f"estimation_epochs must be >= 1, got {estimation_epochs}")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        super().__init__(**kwargs)
        self.unimodal_heads = nn.ModuleList(
            nn.Linear(encoder.out_dim, self.num_classes) for encoder in self.encoders.values()
        )
        self.branch_names = [*self.modalities, "fused"]
        self.register_buffer("blend", torch.full((len(self.branch_names),), 1.0 / len(self.branch_names)))
        self.holdout: torch.Tensor | None = None

    # ----------------------------------------------------------------- training
    def branch_logits(self, batch: Batch) -> list[torch.Tensor]:
        """Logits (B, K) of every branch: one per modality (its own head), then the fused (concat) one."""
        features = [self.encode_modality(m, x) for m, x in enumerate(self.inputs(batch))]
        unimodal = [head(phi) for head, phi in zip(self.unimodal_heads, features, strict=True)]
        return [*unimodal, self.fuse(features).logits]

    def blended_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum_k w_k CE_k over the batch's samples outside V; returns the loss and the CE_k as ``ce_<branch>``."""
        labels = batch["label"]
        kept = (~self.holdout_mask(batch["index"])).to(labels.device).float()
        denominator = kept.sum().clamp_min(1.0)
        losses = [
            (F.cross_entropy(logits, labels, reduction="none") * kept).sum() / denominator
            for logits in self.branch_logits(batch)
        ]
        loss = sum(weight * term for weight, term in zip(self.blend, losses, strict=True))
        return loss, {f"ce_{name}": term for name, term in zip(self.branch_names, losses, strict=True)}

    def training_step(self, batch: Batch, batch_idx: int):
        loss, parts = self.blended_loss(batch)
        self.log_train({"loss": loss, **parts}, batch)
        return loss

    # ----------------------------------------------------------------- held-out split
    def holdout_indices(self, dataset_size: int) -> torch.Tensor:
        """V: a deterministic random subset of round(holdout_fraction * N) dataset indices (at least 1, at most N - 1)."""
        size = min(max(1, round(self.hparams.holdout_fraction * dataset_size)), dataset_size - 1)
        if size < 1:
            raise ValueError(f"GradientBlending needs at least 2 training samples to hold some out, got {dataset_size}")
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(self.hparams.holdout_seed))
        return order[:size].sort().values

    def holdout_mask(self, indices: torch.Tensor) -> torch.Tensor:
        """True where a dataset index is in V."""
        if self.holdout is None:
            raise RuntimeError("the held-out split is chosen when training starts")
        return torch.isin(indices.cpu(), self.holdout)

    # ----------------------------------------------------------------- estimation
    def on_train_start(self) -> None:
        self.holdout = self.holdout_indices(len(self.trainer.train_dataloader.dataset))

    def on_train_epoch_start(self) -> None:
        if self.current_epoch % self.hparams.super_epoch == 0:
            weights = self.estimate_blend()
            if self.trainer.world_size > 1:  # the forks' runs may differ across ranks in the last bits
                weights = self.trainer.strategy.broadcast(weights, src=0)
            self.blend.copy_(weights)
        for name, weight in zip(self.branch_names, self.blend, strict=True):
            self.log(f"train/blend_{name}", weight)

    def branches(self) -> list[nn.Module]:
        """Deep copies of every branch in the current state: one per modality, then the fused one. Each
        encoder comes behind its input noise (``noise_sigma``), so the forks train as the model does."""
        encoders = [nn.Sequential(self.input_noise[name], self.encoders[name]) for name in self.modalities]
        unimodal = [
            UniModalBranch(copy.deepcopy(encoders[m]), copy.deepcopy(head), m) for m, head in enumerate(self.unimodal_heads)
        ]
        fused = MultiModalBranch(nn.ModuleList(copy.deepcopy(encoders)), copy.deepcopy(self.head))
        return [*unimodal, fused]

    def estimate_blend(self) -> torch.Tensor:
        """New weights (branches,) from forks trained on the training part; the current weights when every dG <= 0."""
        holdout, probe, training_part = self._estimation_loaders()
        epochs = self.hparams.estimation_epochs or self.hparams.super_epoch
        generalisation, overfitting = [], []
        for branch in self.branches():
            holdout_before, probe_before = self._mean_loss(branch, holdout), self._mean_loss(branch, probe)
            fork = BranchFit(branch, self.modalities, self.optimizer_factory)
            fit_alone(fork, ForkData(training_part, self.trainer.datamodule), epochs, self.device)
            holdout_after, probe_after = self._mean_loss(branch, holdout), self._mean_loss(branch, probe)
            generalisation.append(holdout_before - holdout_after)
            overfitting.append((holdout_after - probe_after) - (holdout_before - probe_before))
        delta_g, delta_o = torch.tensor(generalisation), torch.tensor(overfitting)
        weights = blend_weights(delta_g, delta_o, self.hparams.epsilon)
        rank_zero_info(
            f"G-Blend at epoch {self.current_epoch}: dG={delta_g.tolist()} dO={delta_o.tolist()} "
            f"-> weights {None if weights is None else weights.tolist()} for {self.branch_names}"
        )
        if weights is None:
            rank_zero_warn("G-Blend: no branch generalised (every dG <= 0); keeping the previous weights")
            return self.blend.clone()
        return weights.to(self.blend)

    @torch.no_grad()
    def _mean_loss(self, branch: nn.Module, loader: DataLoader) -> float:
        """Mean CE of ``branch`` over ``loader`` in evaluation mode, its batches moved to the device by this run's
        Trainer (with the data module's transfer hooks)."""
        total, count = 0.0, 0
        with eval_mode(branch):
            for batch in self._device_batches(loader):
                total += F.cross_entropy(branch(self.inputs(batch)), batch["label"], reduction="sum").item()
                count += batch["label"].shape[0]
        return total / max(count, 1)

    def _device_batches(self, loader: DataLoader) -> Iterator[Batch]:
        for batch in loader:
            if batch is not None:
                yield self.trainer.strategy.batch_to_device(batch, self.device)

    def _estimation_loaders(self) -> tuple[DataLoader, DataLoader, DataLoader]:
        """Loaders over V, over a training probe (|V| random samples of the training part, for L^T) and,
        shuffled, over the training part: subsets of the training loader's dataset with its collate."""
        source = self.trainer.train_dataloader
        in_holdout = torch.zeros(len(source.dataset), dtype=torch.bool)
        in_holdout[self.holdout] = True
        training_part = torch.nonzero(~in_holdout).flatten()
        generator = torch.Generator().manual_seed(self.hparams.holdout_seed + self.current_epoch)
        probe = training_part[torch.randperm(len(training_part), generator=generator)[: len(self.holdout)]]

        def loader(indices: torch.Tensor, shuffle: bool) -> DataLoader:
            return DataLoader(
                Subset(source.dataset, indices.tolist()),
                batch_size=source.batch_size,
                shuffle=shuffle,
                generator=generator if shuffle else None,
                collate_fn=source.collate_fn,
                num_workers=source.num_workers,
            )

        return loader(self.holdout, False), loader(probe, False), loader(training_part, True)
