"""Command line: ``python -m crmt fit|validate|test --config experiments/<name>.yaml [overrides]``.

A LightningCLI in subclass mode: the experiment YAML picks the strategy (model) by class path,
a data config (``experiments/data/<name>.yaml``) the data module. When the project is run from
its source tree, ``experiments/defaults.yaml`` is read first, so experiment files hold only what
differs, and then ``experiments/data/embedded.yaml`` unless the arguments name a data class
themselves: a data config that names another class starts from that class's own defaults, as
nothing of the embedded module is in the namespace to carry over (jsonargparse keeps the values
of same-named arguments across a class switch). :mod:`crmt.experiments` composes the ``--config``
files of ``make train``. ``fit --resume last`` continues the newest run started with the same
``--config`` files, in its own run folder.

The callbacks every run has are named argument groups, so a data or scale config changes one of them
without repeating the others (Lightning's ``add_lightning_class_args``): ``checkpoints``
(:class:`RunCheckpoints`), ``best`` (``best.ckpt``, highest ``val/acc``), ``monitor``
(:class:`RobustnessMonitor`), ``report`` (:class:`RobustnessReport`) and ``predictions``
(:class:`PredictionWriter`), e.g. ``--report.settings.smoothing.samples 32``. ``--trainer.callbacks+=``
adds others. The rich progress bar is on unless ``--trainer.enable_progress_bar false``.
``--seed_everything`` seeds the whole run, the data module's ``seed`` (loader order, augmentation) and the model's
(mixing and noise draws of Mixup, CRMT-Mix, OGM-GE) included.
Each run folder keeps its resolved config (:mod:`crmt.runs`); ``--run <id or folder>`` rebuilds it for
``test``, ``validate`` or ``predict``.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from crmt.callbacks.checkpoints import RunCheckpoints, find_last_checkpoint
from crmt.callbacks.predictions import PredictionWriter
from crmt.callbacks.robustness import RobustnessMonitor, RobustnessReport
from crmt.experiments import DEFAULT_DATA_FILE, DEFAULTS_FILE
from crmt.models.protocol import declared_pixel_normalization
from crmt.runs import SaveRunConfig, check_checkpoint_matches, discard_unstarted_run, expand_run_option
from crmt.strategies.base import MultiModalModule

BEST_CHECKPOINT: dict[str, Any] = {
    "best.monitor": "val/acc", "best.mode": "max", "best.filename": "best", "best.save_top_k": 1,
    "best.enable_version_counter": False, "best.auto_insert_metric_name": False,
}
"""``checkpoints/best.ckpt``: Lightning's ModelCheckpoint on the highest validation accuracy."""


class CRMTCLI(LightningCLI):
    """LightningCLI with the data -> model links (class count, input shapes, pixel normalisation), the CRMT epoch plan,
    test (and so the robustness report) after fit, the named callbacks, one seed, the checkpoint's identity
    check, and no W&B run left behind by a command that failed before it wrote a checkpoint."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoints, "checkpoints")
        parser.add_lightning_class_args(ModelCheckpoint, "best")
        parser.set_defaults(BEST_CHECKPOINT)
        parser.add_lightning_class_args(RobustnessMonitor, "monitor")
        parser.add_lightning_class_args(RobustnessReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shapes", "model.init_args.input_shapes", apply_on="instantiate")
        parser.link_arguments(  # from the whole data module, so that one which declares none is an error naming it
            "data", "model.init_args.pixel_normalization", compute_fn=declared_pixel_normalization, apply_on="instantiate"
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="run the test split after `fit` with the final weights"
        )
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="fit only: continue from 'last' (the newest last.ckpt of a run started with the same --config "
            "files) or from a checkpoint file, in that run's folder (and W&B run)",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        init_args = config.model.init_args
        if "step1_epochs" in init_args and "step2_epochs" in init_args and config.trainer.max_epochs is None:
            config.trainer.max_epochs = init_args.step1_epochs + init_args.step2_epochs
        self._seed_whole_run(config)
        if self.subcommand == "fit" and config.get("resume"):
            self._resume(config)
        if self.subcommand == "predict" and config.predictions.smoothing is None:
            config.predictions.smoothing = config.report.settings.smoothing  # the report's smoothed classifier

    def _parse_ckpt_path(self) -> None:
        """Refuse a checkpoint of another experiment than the configuration's, before Lightning's own step
        overrides the configured model's arguments with the checkpoint's hyperparameters."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        if config is not None and self.config.subcommand != "fit" and config.get("ckpt_path"):
            logger = config.trainer.logger
            name = logger.init_args.get("name") if logger not in (None, False) and "init_args" in logger else None
            check_checkpoint_matches(config.ckpt_path, config.model.class_path, name)
        super()._parse_ckpt_path()

    @staticmethod
    def _seed_whole_run(config) -> None:
        """``seed_everything`` is the run's one seed: a drawn one (``true``) is fixed here, so the saved config
        reproduces the run, and the ``seed`` of the data module and of the model (Mixup's, CRMT-Mix's and OGM-GE's
        draws) follow it. (A model and a data module whose ``seed`` differ would also stop the run: Lightning refuses
        to log their hyperparameters together.)"""
        if config.seed_everything is True:
            config.seed_everything = random.randint(0, 2**31 - 1)
        seed = config.seed_everything
        if not isinstance(seed, int) or isinstance(seed, bool):
            return
        for part in (config.data, config.model):
            if "seed" in part.get("init_args", {}):
                part.init_args.seed = seed

    def _resume(self, config) -> None:
        """Point ``ckpt_path`` at the checkpoint to continue and the logger at that run's folder."""
        if config.get("ckpt_path"):
            raise ValueError("pass either --resume or --ckpt_path, not both")
        logger = config.trainer.logger
        wandb = logger is not None and logger is not False and str(logger.class_path).endswith("WandbLogger")
        if config.resume == "last":
            save_dir = logger.init_args.save_dir if wandb else None
            root = Path(save_dir or config.trainer.default_root_dir or ".")
            checkpoint = find_last_checkpoint(root, self._config_files(config))
        else:
            checkpoint = Path(config.resume)
            if not checkpoint.is_file():
                raise FileNotFoundError(f"--resume {config.resume}: no such checkpoint file")
        config.ckpt_path = str(checkpoint)
        if wandb:  # <save_dir>/<project>/<run id>/checkpoints/<file>: log into the same run
            logger.init_args.id = checkpoint.parent.parent.name
        print(f"resuming {checkpoint}")

    @staticmethod
    def _config_files(config) -> list[str]:
        return [str(path) for path in config.get("config") or []]

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """Lightning's, with the rich progress bar unless ``enable_progress_bar`` is false."""
        if config.get("enable_progress_bar") is not False:
            callbacks = [RichProgressBar(), *callbacks]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            discard_unstarted_run(self.trainer)
            raise

    def before_fit(self) -> None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunCheckpoints):
                callback.configs = self._config_files(self.config.fit)

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)


def _config_names_data_class(value: str) -> bool:
    """Whether a ``--config`` value (a file, or YAML text) has a ``data`` section naming a class."""
    path = Path(value)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8") if path.is_file() else value)
    except (OSError, yaml.YAMLError):
        return False  # the CLI reports it when it parses the value
    data = config.get("data") if isinstance(config, dict) else None
    return isinstance(data, str) or (isinstance(data, dict) and "class_path" in data)


def names_data_class(args: Sequence[str]) -> bool:
    """Whether command line ``args`` name the data class: ``--data <class or file>``,
    ``--data.class_path``, or a ``--config`` whose ``data`` section has a ``class_path``."""
    for index, arg in enumerate(args):
        option, has_value, value = arg.partition("=")
        if option in ("--data", "--data.class_path"):
            return True
        if option in ("-c", "--config"):
            value = value if has_value else (args[index + 1] if index + 1 < len(args) else "")
            if _config_names_data_class(value):
                return True
    return False


def default_config_files(args: Sequence[str]) -> list[str]:
    """What is read before the ``--config`` files: ``experiments/defaults.yaml``, then the embedded
    data config unless ``args`` name a data class (none outside the source tree)."""
    if not DEFAULTS_FILE.is_file():
        return []
    return [str(DEFAULTS_FILE)] + ([] if names_data_class(args) else [str(DEFAULT_DATA_FILE)])


def main(args: list[str] | None = None, callbacks: list[Callback] | None = None) -> CRMTCLI:
    """Entry point of ``python -m crmt`` and the ``crmt`` script.

    ``callbacks`` are added to those of the configuration (for programmatic use and tests).
    W&B runs offline unless WANDB_MODE says otherwise or a W&B sweep agent started the run
    (the agent sets WANDB_SWEEP_ID; its trials must log online for the sweep to see them).
    """
    if "WANDB_SWEEP_ID" not in os.environ:
        os.environ.setdefault("WANDB_MODE", "offline")
    if args is None:  # LightningCLI reads sys.argv (and warns when given both)
        sys.argv[1:] = expand_run_option(sys.argv[1:])
    else:
        args = expand_run_option(args)
    defaults = default_config_files(sys.argv[1:] if args is None else args)
    return CRMTCLI(
        MultiModalModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={name: {"default_config_files": defaults} for name in ("fit", "validate", "test", "predict")},
        trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
        args=args,
    )
