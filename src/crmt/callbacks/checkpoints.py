"""Checkpoints that lose nothing: a resume point at every epoch boundary, at phase changes and on preemption.

Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only when
training ends, so an interrupted run left nothing, and a SIGTERM ended the process with exit
status 0. :class:`RunCheckpoints` keeps Lightning's checkpoint format and folder
(``<run folder>/checkpoints``) and adds the resume points a long or preemptible run needs.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

INTERRUPTED = "interrupted"
MID_EPOCH = "mid-epoch"
RUN_RECORD = "run.json"
"""Beside the checkpoints: the ``--config`` files the run was started with (to find it again for ``--resume last``)."""
_PARTIAL_SUFFIX = ".partial"


class RunCheckpoints(ModelCheckpoint):
    """Resume points of a fit, each written under a temporary name and renamed into place.

    - ``last.ckpt`` when training starts and at the end of every epoch, after the module's own
      epoch-end work (a CRMT phase switch included). A fit resumed from it
      (``make train EXP=... RESUME=last``) reproduces the uninterrupted run bit for bit.
    - ``<milestone>.ckpt`` at the end of an epoch the module names
      (:meth:`MultiModalModule.checkpoint_milestone`, e.g. ``phase-switch.ckpt``), kept for good.
    - ``mid-epoch.ckpt`` every ``mid_epoch_minutes`` of training inside an epoch (for the long
      epochs of the real datasets), and ``interrupted.ckpt`` on SIGTERM, SIGUSR1 or Ctrl-C.
      Lightning resumes them mid-epoch, but the data loader restarts the epoch's order, so such a
      resume is not bit-identical (Lightning warns); ``last.ckpt`` is.

    SIGUSR1, which clusters send ahead of a kill (SLURM's ``--signal=USR1@90``), is handled like
    SIGTERM, unless Lightning's SLURM auto-requeue already owns it (it then saves and requeues).
    After SIGTERM or SIGUSR1 the process exits with status 128 + the signal number, so a job
    scheduler records the run as interrupted, not as a success.
    """

    def __init__(self, dirpath: str | None = None, mid_epoch_minutes: float | None = 30.0) -> None:
        if mid_epoch_minutes is not None and mid_epoch_minutes <= 0:
            raise ValueError(f"mid_epoch_minutes must be > 0 (or None for no mid-epoch checkpoints), got {mid_epoch_minutes}")
        super().__init__(
            dirpath=dirpath, save_last=True, save_top_k=0, save_on_train_epoch_end=True, enable_version_counter=False
        )
        self.mid_epoch_minutes = mid_epoch_minutes
        self.configs: list[str] | None = None
        """The run's ``--config`` files, set by the CLI and recorded in ``run.json``."""
        self.received_signal: int | None = None
        self._last_save_time = time.monotonic()
        self._previous_sigusr1: Any = None

    # ----------------------------------------------------------------- when
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._handle_sigusr1(trainer)
            if self.configs is not None and trainer.is_global_zero and self.dirpath is not None:
                os.makedirs(self.dirpath, exist_ok=True)
                Path(self.dirpath, RUN_RECORD).write_text(json.dumps({"configs": self.configs}, indent=1))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None
        super().teardown(trainer, pl_module, stage)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The first resume point, so that a run interrupted in its first epoch can resume too."""
        if trainer.global_step == 0 and trainer.ckpt_path is None:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        if self.mid_epoch_minutes is None or trainer.sanity_checking:
            return
        due = time.monotonic() - self._last_save_time >= 60 * self.mid_epoch_minutes
        if trainer.strategy.broadcast(due):  # rank 0 decides, so every rank saves together
            self._save_named(trainer, MID_EPOCH)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # ModelCheckpoint itself writes last.ckpt only together with a top-k checkpoint, never with save_top_k=0;
        # and always here, even right after a mid-epoch save: the epoch's end-of-epoch work changed the state
        if not (trainer.fast_dev_run or trainer.sanity_checking):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        milestone = pl_module.checkpoint_milestone() if hasattr(pl_module, "checkpoint_milestone") else None
        if milestone is not None:
            self._save_named(trainer, milestone)
        self._last_save_time = time.monotonic()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        self._save_named(trainer, INTERRUPTED)
        rank_zero_info(
            f"interrupted: {INTERRUPTED}.ckpt (this point) and last.ckpt (the last epoch boundary, resumes exactly) "
            f"are in {self.dirpath}"
        )
        if isinstance(exception, SIGTERMException):
            exception.code = 128 + (self.received_signal or signal.SIGTERM)

    # ----------------------------------------------------------------- how
    def _save_named(self, trainer: Trainer, name: str) -> None:
        assert self.dirpath is not None
        self._save_checkpoint(trainer, os.path.join(self.dirpath, f"{name}{self.FILE_EXTENSION}"))
        self._last_save_time = time.monotonic()

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Write ``filepath`` under a temporary name and rename it, so a kill never leaves a torn file."""
        partial = f"{filepath}{_PARTIAL_SUFFIX}"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            self._fs.mv(partial, filepath)
        self._last_checkpoint_saved = filepath

    def _handle_sigusr1(self, trainer: Trainer) -> None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
            return
        self._previous_sigusr1 = signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def _on_sigusr1(self, signum: int, frame: FrameType | None) -> None:
        """Record the signal and hand it to Lightning's SIGTERM handler (graceful stop, DDP ranks told)."""
        self.received_signal = signum
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        if callable(sigterm_handler):
            sigterm_handler(signum, frame)


def find_last_checkpoint(root: str | os.PathLike[str], configs: list[str]) -> Path:
    """The newest ``last.ckpt`` under ``root`` of a run started with exactly the ``--config`` files ``configs``."""
    candidates = [
        record.parent / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        for record in Path(root).rglob(f"checkpoints/{RUN_RECORD}")
        if json.loads(record.read_text()).get("configs") == configs
    ]
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        raise FileNotFoundError(
            f"no run started with --config {' '.join(configs)} has a last.ckpt under {root}; nothing to resume "
            f"(start one without --resume, or pass --resume <checkpoint file>)"
        )
    return max(existing, key=lambda path: path.stat().st_mtime)
