"""A run folder is a reproducible artifact: it holds the configuration and command that made it.

``python -m crmt fit`` writes, into the run's own folder (``<save_dir>/<project>/<run id>``, beside
``checkpoints/`` and ``report/``):

- ``config.yaml``: the resolved configuration (every default, override and link applied), which
  ``python -m crmt <subcommand> --config`` reads back to rebuild exactly that model and data;
- ``command.txt``: the command line that made it, one line per invocation (a resumed fit appends its own).

``python -m crmt test|validate|predict --run <id or folder>`` (``make eval|validate|predict RUN=...``)
expands, through :func:`run_arguments`, into that config, the chosen checkpoint (``--checkpoint last``,
``best`` or a file) and an output folder inside the run, with W&B logging off. Checkpoints record the
experiment that wrote them (:func:`checkpoint_identity`); a checkpoint given with the configuration of
another experiment is refused (:func:`check_checkpoint_matches`).
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from crmt.reproducibility import run_context

CONFIG_FILE: Final = "config.yaml"
COMMAND_FILE: Final = "command.txt"
CHECKPOINT_CHOICES: Final = ("last", "best")
"""Named checkpoints of a run folder: ``checkpoints/last.ckpt`` (the final weights, what the run's own report
evaluated) and ``checkpoints/best.ckpt`` (the epoch of highest ``val/acc``)."""
IDENTITY_KEY: Final = "crmt_identity"
"""Checkpoint entry naming the strategy class and experiment that wrote it (:func:`checkpoint_identity`)."""
RUN_OUTPUTS: Final = {"test": "eval", "predict": "predictions"}
"""Folder inside the run that ``--run`` writes each subcommand's output to (``<folder>/<checkpoint name>``)."""


def run_folder(trainer: Trainer) -> Path:
    """The run's own folder: ``<save_dir>/<name>/<version>`` of the logger (where checkpoints go), else the root dir."""
    logger = trainer.logger
    if logger is not None and logger.save_dir is not None:
        return Path(logger.save_dir) / str(logger.name) / str(logger.version)
    return Path(trainer.default_root_dir)


class SaveRunConfig(SaveConfigCallback):
    """Lightning's config saving, into the run folder (not one ``<save_dir>/config.yaml`` shared by every run).

    Only a run with a logger has a folder of its own; the first invocation writes ``config.yaml``, every
    invocation appends its command line to ``command.txt`` (a resumed fit keeps the config it started with).
    Rank zero only, called after the data module's set-up, so a run that fails there leaves no W&B run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is None:
            return
        folder = run_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / CONFIG_FILE).is_file():
            self.parser.save(self.config, folder / CONFIG_FILE, skip_none=False, overwrite=True)
        with open(folder / COMMAND_FILE, "a", encoding="utf-8") as command:
            command.write(shlex.join([Path(sys.executable).name, "-m", "crmt", *sys.argv[1:]]) + "\n")
        trainer.logger.log_hyperparams({"run": run_context(trainer)})


def discard_unstarted_run(trainer: Trainer | None) -> None:
    """After a command failed: remove the W&B run it created and its run folder if no checkpoint was written
    there (a failure at start-up), so that failed starts leave no orphan runs. Rank zero only."""
    logger = trainer.logger if trainer is not None else None
    if not isinstance(logger, WandbLogger) or logger._experiment is None or not trainer.is_global_zero:
        return
    folder = run_folder(trainer)
    if any((folder / "checkpoints").glob("*.ckpt")):
        return
    wandb_folder = Path(logger.experiment.dir).parent  # <save_dir>/wandb/<offline-run-...>/files
    logger.experiment.finish(exit_code=1)
    shutil.rmtree(wandb_folder, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def resolve_run(run: str | os.PathLike[str], root: str | os.PathLike[str] = "runs") -> Path:
    """The folder of ``run``: a folder holding ``config.yaml``, or a run id looked up as ``<root>/*/<id>``."""
    path = Path(run)
    if (path / CONFIG_FILE).is_file():
        return path
    matches = sorted(folder for folder in Path(root).glob(f"*/{run}") if (folder / CONFIG_FILE).is_file())
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"run {run!r} matches several folders under {root}: {', '.join(map(str, matches))}")
    raise FileNotFoundError(
        f"run {run!r}: neither a folder holding {CONFIG_FILE} nor a run id under {root}/<project>/ "
        f"(runs written before run folders held their configuration cannot be rebuilt this way: "
        f"use --config <experiment files> --ckpt_path <checkpoint>)"
    )


def run_checkpoint(folder: Path, checkpoint: str = "last") -> Path:
    """``checkpoints/<checkpoint>.ckpt`` of a run folder for a name of :data:`CHECKPOINT_CHOICES`, else the file."""
    path = folder / "checkpoints" / f"{checkpoint}.ckpt" if checkpoint in CHECKPOINT_CHOICES else Path(checkpoint)
    if not path.is_file():
        present = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
        raise FileNotFoundError(f"checkpoint {path} does not exist (the run has: {', '.join(present) or 'none'})")
    return path


def run_arguments(subcommand: str, run: str, checkpoint: str = "last", root: str = "runs") -> list[str]:
    """The arguments that rebuild run ``run`` for ``subcommand`` (test, validate or predict) from its own folder:
    its ``config.yaml``, the checkpoint, no logger, and the output inside the run
    (``eval/<checkpoint>/`` for test, ``predictions/<checkpoint>.csv`` for predict)."""
    folder = resolve_run(run, root)
    path = run_checkpoint(folder, checkpoint)
    arguments = ["--config", str(folder / CONFIG_FILE), "--ckpt_path", str(path), "--trainer.logger", "false"]
    if subcommand == "test":
        arguments += ["--report.output_dir", str(folder / RUN_OUTPUTS["test"] / path.stem)]
        experiment = _experiment_name(folder / CONFIG_FILE)
        arguments += ["--report.name", experiment] if experiment else []
    elif subcommand == "predict":
        arguments += ["--predictions.output", str(folder / RUN_OUTPUTS["predict"] / f"{path.stem}.csv")]
    return arguments


def _experiment_name(config: Path) -> str | None:
    """The run name its logger had (the experiment's name), which names the report without a logger."""
    logger = (yaml.safe_load(config.read_text(encoding="utf-8")).get("trainer") or {}).get("logger")
    name = (logger.get("init_args") or {}).get("name") if isinstance(logger, dict) else None
    return name if isinstance(name, str) else None


def expand_run_option(args: Sequence[str]) -> list[str]:
    """``args`` of ``python -m crmt`` with ``--run <run> [--checkpoint <name or file>]`` replaced by
    :func:`run_arguments` (placed right after the subcommand, so later arguments override the run's config)."""
    args = list(args)
    values: dict[str, str] = {}
    for option in ("--run", "--checkpoint"):
        for index, arg in enumerate(args):
            name, has_value, value = arg.partition("=")
            if name == option:
                if not has_value:
                    if index + 1 >= len(args):
                        raise SystemExit(f"{option} needs a value")
                    value = args.pop(index + 1)
                args.pop(index)
                values[option] = value
                break
    if "--run" not in values:
        if "--checkpoint" in values:
            raise SystemExit("--checkpoint chooses a checkpoint of --run <id or folder>; pass --run too")
        return args
    subcommand = args[0] if args else ""
    if subcommand not in ("test", "validate", "predict"):
        raise SystemExit(f"--run rebuilds a finished run for test, validate or predict, not {subcommand or 'nothing'}")
    return [subcommand, *run_arguments(subcommand, values["--run"], values.get("--checkpoint", "last")), *args[1:]]


def class_path_of(obj_or_class: Any) -> str:
    cls = obj_or_class if isinstance(obj_or_class, type) else type(obj_or_class)
    return f"{cls.__module__}.{cls.__qualname__}"


def checkpoint_identity(module: LightningModule) -> dict[str, str | None]:
    """What a checkpoint records about its writer: the strategy class and the experiment (the logger's run name)."""
    logger = module._trainer.logger if module._trainer is not None else None
    experiment = getattr(logger, "_name", None)  # WandbLogger's run name (logger.name is the W&B project)
    return {"strategy": class_path_of(module), "experiment": experiment if isinstance(experiment, str) else None}


def _resolved_class_path(class_path: str) -> str:
    module_name, _, name = class_path.rpartition(".")
    try:
        return class_path_of(getattr(importlib.import_module(module_name), name))
    except (ImportError, AttributeError):
        return class_path


def check_checkpoint_matches(checkpoint: str | os.PathLike[str], class_path: str, experiment: str | None) -> None:
    """Refuse a checkpoint written by another strategy or experiment than the configuration's (``ValueError``
    naming both). Checkpoints written before they recorded their identity pass unchecked."""
    identity = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get(IDENTITY_KEY)
    if not identity:
        return
    wanted = {"strategy": _resolved_class_path(class_path), "experiment": experiment}
    mismatched = [key for key in ("strategy", "experiment") if wanted[key] and identity.get(key) and
                  wanted[key] != identity[key]]
    if mismatched:
        raise ValueError(
            f"checkpoint {checkpoint} was written by experiment {identity.get('experiment')!r} "
            f"({identity.get('strategy')}), but the configuration is "
            f"{f'experiment {experiment!r} ' if experiment else ''}({wanted['strategy']}): "
            f"pass the checkpoint's own configuration (python -m crmt <subcommand> --run <its run folder>)"
        )
