"""The one way a strategy expresses training phases: step 1 for ``step1_epochs`` epochs, then step 2.

Used by CRMT (method.md §3: step 1 trains the model, step 2 only the integration weights) and
MSEFM (MinSim, then ExFMem). The phase is a buffer, so a checkpoint resumes in the right step.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

STEP1, STEP2 = 1, 2


class TwoStepTraining(LightningModule):
    """Mixin of a LightningModule trained in two steps; subclasses implement :meth:`enter_step2`.

    The switch runs once: at the end of the last step-1 epoch, so that epoch's checkpoint
    (``last.ckpt`` and ``phase-switch.ckpt``) holds it, or at the start of the first epoch when
    ``step1_epochs`` is 0. It does not run when training ends within step 1. Buffers: ``phase``
    (1 or 2) and ``switch_epoch``, the trainer epoch during which the switch ran (-1 before).
    """

    def init_phases(self, step1_epochs: int, step2_epochs: int) -> None:
        """Validate the plan and register the phase buffers; call from ``__init__`` after ``super().__init__``."""
        if step1_epochs < 0 or step2_epochs < 0:
            raise ValueError(f"step1_epochs and step2_epochs must be >= 0, got {step1_epochs}, {step2_epochs}")
        self.step1_epochs, self.step2_epochs = step1_epochs, step2_epochs
        self.register_buffer("phase", torch.tensor(STEP1))
        self.register_buffer("switch_epoch", torch.tensor(-1))

    @property
    def in_step2(self) -> bool:
        return int(self.phase) == STEP2

    def enter_step2(self, last_step1_epoch: int) -> None:
        """What the switch does (``phase`` is set to step 2 right after); ``last_step1_epoch`` is -1 when
        step 1 has no epochs."""
        raise NotImplementedError

    def on_step1_epoch_end(self) -> None:
        """Called at the end of every step-1 epoch, before a possible switch."""

    def on_step2_epoch_end(self) -> None:
        """Called at the end of every step-2 epoch."""

    def on_fit_start(self) -> None:
        planned = self.step1_epochs + self.step2_epochs
        if self.trainer.max_epochs != planned:
            rank_zero_warn(
                f"trainer.max_epochs={self.trainer.max_epochs} but step1_epochs + step2_epochs = {planned}: "
                f"step 2 runs from epoch {self.step1_epochs} until max_epochs"
            )

    def on_train_epoch_start(self) -> None:
        if not self.in_step2 and self.current_epoch >= self.step1_epochs:  # step1_epochs = 0
            self._switch(last_step1_epoch=self.current_epoch - 1)

    def on_train_epoch_end(self) -> None:
        self.log("train/phase", self.phase.float())
        if self.in_step2:
            self.on_step2_epoch_end()
            return
        self.on_step1_epoch_end()
        next_epoch, max_epochs = self.current_epoch + 1, self.trainer.max_epochs
        training_ends = max_epochs is not None and max_epochs >= 0 and next_epoch >= max_epochs  # -1: no limit
        if next_epoch >= self.step1_epochs and not training_ends:
            self._switch(last_step1_epoch=self.current_epoch)

    def _switch(self, last_step1_epoch: int) -> None:
        self.switch_epoch.fill_(self.current_epoch)
        self.enter_step2(last_step1_epoch)
        self.phase.fill_(STEP2)

    def checkpoint_milestone(self) -> str | None:
        """``"phase-switch"`` at the end of the epoch that switched to step 2."""
        return "phase-switch" if self.in_step2 and int(self.switch_epoch) == self.current_epoch else None
