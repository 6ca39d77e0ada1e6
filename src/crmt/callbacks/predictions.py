"""``python -m crmt predict``: one CSV row per clip with the model's prediction (and the smoothed classifier's).

Rows, in dataset order: ``clip`` (the clip's file when the data module names its clips, see
:class:`ClipNames`, else its index), ``index``, ``label`` (blank when unknown), ``predicted``, the
probabilities ``p_0 ... p_{K-1}`` (softmax of the logits, float32), and with smoothing settings
``smoothed``: Cohen et al.'s PREDICT of the smoothed classifier with noise on every modality (the
report's joint scope), a class or ``abstain``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from crmt.robustness.smoothing import ABSTAIN, JOINT_SCOPE, SmoothingSettings, noise_generator, predict
from crmt.runs import run_folder

DEFAULT_OUTPUT = "predictions.csv"


@runtime_checkable
class ClipNames(Protocol):
    """A data module that names its clips: ``clip_name(split, index)`` is the file of the predict split's
    sample ``index`` (what :meth:`predict_split` says the predict loader reads)."""

    def predict_split(self) -> str: ...

    def clip_name(self, split: str, index: int) -> str: ...


class PredictionWriter(BasePredictionWriter):
    """Writes the rows of ``python -m crmt predict`` to ``output`` (default ``<run folder>/predictions.csv``,
    ``predictions.csv`` without a logger); ``smoothing``: the smoothed prediction's settings (``sigma``,
    ``n``, ``alpha``, ``batch``, ``seed``; the CLI gives it the report's); ``smoothed``: whether to add the
    ``smoothed`` column when there are such settings (its cost, n forward draws per clip, is announced
    first). Under DDP every rank predicts its shard and rank zero writes all rows."""

    def __init__(self, output: str | None = None, smoothing: SmoothingSettings | None = None, smoothed: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.smoothing = smoothing if smoothed else None
        self.rows: list[dict[str, Any]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []
        if self.smoothing is not None:
            rank_zero_info(
                f"Smoothed prediction: Cohen et al.'s PREDICT of every clip with n {self.smoothing.n} noise draws "
                f"(sigma {self.smoothing.sigma}, noise on every modality), {-(-self.smoothing.n // self.smoothing.batch)} "
                "forward passes per clip; --predictions.smoothed false leaves it out"
            )

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if prediction is None:
            return
        smoothed = self._smoothed(pl_module, batch, prediction["index"]) if self.smoothing is not None else None
        for i, index in enumerate(prediction["index"].tolist()):
            label = int(prediction["label"][i])
            row = {"index": index, "label": label if label >= 0 else "", "predicted": int(prediction["predicted"][i])}
            row.update({f"p_{k}": float(p) for k, p in enumerate(prediction["probabilities"][i].tolist())})
            if smoothed is not None:
                row["smoothed"] = "abstain" if smoothed[i] == ABSTAIN else smoothed[i]
            self.rows.append(row)

    def _smoothed(self, pl_module: LightningModule, batch: dict[str, torch.Tensor], index: torch.Tensor) -> list[int]:
        """PREDICT (noise on every modality) of each sample, its noise seeded like the report's joint scope."""
        settings = self.smoothing
        inputs = pl_module.inputs(batch)
        noised = list(range(len(inputs)))
        scope = 0  # noise_generator's number of the JOINT_SCOPE
        return [
            predict(pl_module, [x[i : i + 1] for x in inputs], noised, settings.sigma, settings.n, settings.alpha,
                    settings.batch, noise_generator(settings.seed, int(index[i]), scope, inputs[0].device))
            for i in range(index.shape[0])
        ]

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = self.rows
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero:
            return
        rows = sorted({row["index"]: row for row in rows}.values(), key=lambda row: row["index"])
        datamodule = trainer.datamodule
        names = isinstance(datamodule, ClipNames)
        split = datamodule.predict_split() if names else None
        for row in rows:
            row["clip"] = datamodule.clip_name(split, row["index"]) if names else row["index"]
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            columns = ["clip", "index", "label", "predicted", *(k for k in (rows[0] if rows else {}) if k.startswith("p_"))]
            writer = csv.DictWriter(handle, fieldnames=columns + (["smoothed"] if self.smoothing else []))
            writer.writeheader()
            writer.writerows(rows)
        scope = f", smoothed ({JOINT_SCOPE} scope, sigma {self.smoothing.sigma}, n {self.smoothing.n})" if self.smoothing else ""
        rank_zero_info(f"predictions of {len(rows)} clips{scope} written to {path}")

    def _path(self, trainer: Trainer) -> Path:
        if self.output:
            return Path(self.output)
        return run_folder(trainer) / DEFAULT_OUTPUT if trainer.logger is not None else Path(DEFAULT_OUTPUT)
