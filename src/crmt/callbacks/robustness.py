"""Lightning callbacks that evaluate robustness: a periodic monitor during validation and the end-of-run report.

Both run :class:`~crmt.robustness.evaluation.RobustnessEvaluator` on every rank, gather the
per-sample records of all ranks (collectives on every rank), and log from rank zero only.
Images, histograms and tables go to Weights & Biases when the trainer's logger is a
``WandbLogger``; scalars go through ``LightningModule.log`` (monitor) or the logger (report).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from crmt.models.protocol import MultiModalModel
from crmt.reproducibility import run_context
from crmt.robustness.ball import pixel_ranges_for
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.progress import Progress
from crmt.robustness.records import RobustnessResults
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.figures import plot_eta_ratio_heatmap
from crmt.robustness.report import ReportFiles, write_report
from crmt.robustness.results import RobustnessMetrics
from crmt.runs import run_folder


def _evaluator(
    trainer: Trainer, pl_module: MultiModalModel, settings: RobustnessSettings, dataset_size: int | None = None
) -> RobustnessEvaluator:
    """The evaluator of ``pl_module``, clamping attacked frames to the model's own pixel ranges (its
    ``pixel_normalization``, saved with its hyperparameters), whatever data module is attached."""
    ranges = pixel_ranges_for(pl_module.modalities, pl_module.pixel_normalization)
    return RobustnessEvaluator(pl_module, settings, ranges, dataset_size)


def _test_split_size(trainer: Trainer) -> int | None:
    """Samples of the test loader's dataset (None when it has no length): smoothing spreads its clips over them."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if hasattr(dataset, "__len__") else None


def _test_samples_per_rank(trainer: Trainer) -> int | None:
    """Test samples each rank is fed (None when unknown): its shard of the split (DistributedSampler pads the
    shards to one size), at most ``limit_test_batches`` batches of it; sizes the cost announcements."""
    size = _test_split_size(trainer)
    if size is None:
        return None
    samples = -(-size // max(trainer.world_size, 1))
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    batches = (getattr(trainer, "num_test_batches", None) or [None])[0]
    batch_size = getattr(loader, "batch_size", None)
    if isinstance(batches, int) and isinstance(batch_size, int):
        samples = min(samples, batches * batch_size)
    return samples


def _finalize(evaluator: RobustnessEvaluator, trainer: Trainer, pl_module: LightningModule) -> RobustnessResults:
    distributed = trainer.world_size > 1
    return evaluator.finalize(
        all_gather=pl_module.all_gather if distributed else None,
        reduce_max=(lambda t: trainer.strategy.reduce(t, reduce_op="max")) if distributed else None,
    )


def scalar_metrics(metrics: RobustnessMetrics, prefix: str) -> dict[str, float]:
    """Flat scalars of an evaluation: attack accuracies (the paper's protocol and, as ``acc_adaptive*``, the
    adaptive worst case), radius mean/median, eta log-ratio, audit rates (``audit_violation_rate`` under
    l2-PGD, ``audit_adaptive_violation_rate`` under the adaptive suite), the number of raised sanity checks
    (``adaptive_flags``), and per smoothed scope the smoothed certified accuracy at its table budget, the
    abstention rate and the reach R_max of the smoothing settings (the budget accuracy is 0 by construction
    above it), and with sound radii the sound certified accuracy at each scope's budget."""
    scalars = {f"{prefix}/acc_{threat.key}": value for threat, value in metrics.accuracy.items()}
    certificates = (("radius", metrics.certified), ("model_radius", metrics.certified_model),
                    ("sound_radius", metrics.certified_sound))
    for name, certificate in certificates:
        if certificate is None:
            continue
        for scope, summary in certificate.radii.items():
            scalars[f"{prefix}/{name}_mean{scope.suffix}"] = summary.mean
            scalars[f"{prefix}/{name}_median{scope.suffix}"] = summary.median
    if metrics.certified_sound is not None:
        for scope, summary in metrics.certified_sound.radii.items():
            if summary.curve is not None:
                scalars[f"{prefix}/sound_acc_at_budget{scope.suffix}"] = summary.curve.at(metrics.settings.budget(scope))
    if metrics.eta_ratio is not None and metrics.eta_ratio.mean_log_ratio is not None:
        scalars[f"{prefix}/eta_log_ratio_mean"] = metrics.eta_ratio.mean_log_ratio
    if metrics.audit is not None and metrics.audit.eligible:
        scalars[f"{prefix}/audit_violation_rate"] = metrics.audit.violation_rate
        if metrics.audit.adaptive_violation_rate is not None:
            scalars[f"{prefix}/audit_adaptive_violation_rate"] = metrics.audit.adaptive_violation_rate
    if metrics.adaptive is not None:
        scalars[f"{prefix}/adaptive_flags"] = float(len(metrics.adaptive.raised))
    for scope, smoothed in (metrics.smoothed or {}).items():
        scalars[f"{prefix}/smoothed_acc_at_budget{scope.suffix}"] = smoothed.accuracy_at_budget
        scalars[f"{prefix}/smoothed_abstention{scope.suffix}"] = smoothed.abstention_rate
        scalars[f"{prefix}/smoothed_max_radius{scope.suffix}"] = smoothed.max_radius
    return scalars


def _log_media(
    trainer: Trainer, results: RobustnessResults, metrics: RobustnessMetrics, prefix: str, images: dict[str, Path]
) -> None:
    """Images, radius histograms and the accuracy table to W&B (rank zero, WandbLogger only)."""
    logger = trainer.logger
    if not isinstance(logger, WandbLogger) or not trainer.is_global_zero:
        return
    import wandb

    for key, path in images.items():
        logger.log_image(key=f"{prefix}/{key}", images=[str(path)], step=trainer.global_step)
    if results.certified is not None:
        histograms = {
            f"{prefix}/radius{scope.suffix}_hist": wandb.Histogram(radius.float().cpu().numpy())
            for scope, radius in results.certified.radii.items()
        }
        logger.experiment.log({**histograms, "trainer/global_step": trainer.global_step})
    logger.log_table(
        key=f"{prefix}/accuracy",
        columns=["epoch", *(threat.title for threat in metrics.threats)],
        data=[[trainer.current_epoch, *metrics.accuracy.values()]],
        step=trainer.global_step,
    )


class RobustnessMonitor(Callback):
    """Every ``every_n_epochs`` validation epochs, attacks and certifies the first ``num_samples``
    validation samples of each rank and logs, under ``robust/``: attack accuracies, certified
    radius mean/median (multi-modal and per modality) with histograms, and the eta ratio
    ``eta^(m0)/eta^(m1)`` (modality 0 over modality 1) per class pair as a K x K heatmap plus its
    mean log-ratio.

    Args:
        every_n_epochs: evaluate after validation epochs ``n - 1, 2n - 1, ...``.
        num_samples: validation samples per rank to evaluate.
        settings: attacks and certificates; by default the paper's budgets, no curves, no audit,
            no sound bound, no smoothing (kept cheap for a per-epoch check).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 64,
        settings: RobustnessSettings = RobustnessSettings(curve_radii=(), audit_samples=0),
    ) -> None:
        if every_n_epochs < 1 or num_samples < 1:
            raise ValueError(f"every_n_epochs and num_samples must be >= 1, got {every_n_epochs} and {num_samples}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.settings = settings
        self.stored: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        self.results: RobustnessResults | None = None

    def _active(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stored = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        room = self.num_samples - sum(int(labels.shape[0]) for _, labels in self.stored)
        if batch is None or room <= 0 or not self._active(trainer):
            return
        with torch.inference_mode(False):
            inputs = [x[:room].detach().clone() for x in pl_module.inputs(batch)]
            self.stored.append((inputs, batch["label"][:room].detach().clone()))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer):
            return
        evaluator = _evaluator(trainer, pl_module, self.settings)
        evaluator.show_progress(Progress.of_trainer(trainer), sum(int(labels.shape[0]) for _, labels in self.stored))
        for inputs, labels in self.stored:
            evaluator.update(inputs, labels)
        self.stored = []
        self.results = results = _finalize(evaluator, trainer, pl_module)
        metrics = results.metrics()
        for name, value in scalar_metrics(metrics, "robust").items():
            pl_module.log(name, value, rank_zero_only=True)
        images = {}
        if metrics.eta_ratio is not None and trainer.is_global_zero and isinstance(trainer.logger, WandbLogger):
            path = run_folder(trainer) / "monitor" / f"eta_ratio_epoch{trainer.current_epoch}.png"
            images["eta_ratio_heatmap"] = plot_eta_ratio_heatmap(metrics.eta_ratio, path)
        _log_media(trainer, results, metrics, "robust", images)


class RobustnessReport(Callback):
    """After ``test``: the full robustness report of the test split (the paper's Table 2 layout,
    the adaptive evaluation and its sanity checks with ``settings.adaptive``, accuracy-vs-radius
    curves, eta heatmap, certified accuracy, radius audit, randomized smoothing with
    ``settings.smoothing``) written to
    ``<run folder>/report/`` (or ``output_dir``), printed, and logged to W&B under ``report/``.

    Args:
        settings: attacks and certificates (the paper's protocol by default).
        output_dir: where to write; default the run folder of the logger.
        name: the method's name in the table; default the logger's run name, else the model class.
    """

    def __init__(
        self,
        settings: RobustnessSettings = RobustnessSettings(),
        output_dir: str | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.output_dir = output_dir
        self.name = name
        self.evaluator: RobustnessEvaluator | None = None
        self.results: RobustnessResults | None = None
        self.files: ReportFiles | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.evaluator = _evaluator(trainer, pl_module, self.settings, _test_split_size(trainer))
        # smoothing and the adaptive suite announce their clips, draws and measured time left, with a bar
        self.evaluator.show_progress(Progress.of_trainer(trainer), _test_samples_per_rank(trainer))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch is not None:
            self.evaluator.update(pl_module.inputs(batch), batch["label"], batch.get("index"))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.results = results = _finalize(self.evaluator, trainer, pl_module)
        self.evaluator = None
        if not trainer.is_global_zero:
            return
        name = self.name or _run_name(trainer, pl_module)
        folder = Path(self.output_dir) if self.output_dir else run_folder(trainer) / "report"
        context = {**run_context(trainer), "skipped_clips": getattr(trainer.datamodule, "skipped_clips", [])}
        self.files = files = write_report(results, folder, name, context)
        rank_zero_info(files.markdown.read_text(encoding="utf-8") + f"\nReport files: {folder}")
        metrics = results.metrics()
        if metrics.adaptive is not None and metrics.adaptive.raised:
            rank_zero_warn(f"{name}: sanity checks of the adaptive evaluation raised: "
                           + "; ".join(check.line() for check in metrics.adaptive.raised))
        if trainer.logger is not None:
            trainer.logger.log_metrics(scalar_metrics(metrics, "report"), step=trainer.global_step)
        _log_media(trainer, results, metrics, "report", files.images())


def _run_name(trainer: Trainer, pl_module: LightningModule) -> str:
    logger = trainer.logger
    name = getattr(getattr(logger, "experiment", None), "name", None) if isinstance(logger, WandbLogger) else None
    return str(name) if name else type(pl_module).__name__

