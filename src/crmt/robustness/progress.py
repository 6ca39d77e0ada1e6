"""Costly steps of an evaluation announce themselves: what runs, on how many clips, at what cost per clip,
how long it will take, and a progress bar while it runs.

A step (:meth:`Progress.task`; randomized smoothing and the adaptive suite) prints

1. one line before its first unit of work: what runs, on how many test clips, the noise draws, gradient
   steps or queries per clip;
2. one line after that first unit (a clip for smoothing, a chunk of clips for the adaptive suite): the
   seconds it took and the time left, ``seconds of the first unit / its clips x the clips still to come on
   this rank``. The estimate is **measured, not guessed**: the first unit is the step's own work (no extra
   probe, so it costs nothing), timed on this device with this model. Caveats: a first unit includes the
   warm-up (allocations; on a GPU kernel selection), so it errs on the long side; a chunk of the adaptive
   suite costs more where more clips stand, so the rest of a split whose clips differ costs otherwise; the
   time is the step's own, and the evaluation's other work (the paper's attacks) adds to the wall time;
3. one line when the step is done, with its total time.

Between them, a progress bar over the step's clips: a task of the trainer's ``RichProgressBar`` while that
one runs, else a ``tqdm`` bar (both libraries come with Lightning); none where the output is not a terminal
or bars are off (``bar=False``: the trainer's progress bar is disabled), so logs and CI stay clean. The
lines are printed in every case. Only rank zero (``show``) prints or draws: under DDP every rank evaluates
its shard at the same time, so the counts announced are all ranks' together and this rank's share, and the
bar and the estimate are rank zero's. Nothing here draws random numbers or changes which clips, seeds or
draws an evaluation uses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from tqdm import tqdm

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``7 min 5 s``, ``7 h 29 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    if seconds < 3570:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


def plural(count: int, unit: str) -> str:
    """``1 clip``, ``3 clips``."""
    return f"{count} {unit}{'' if count == 1 else 's'}"


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def _rich_progress_of(callback: Any) -> Any:
    """The running ``rich.progress.Progress`` of a ``RichProgressBar`` (None for any other callback, or
    while it has none)."""
    progress = getattr(callback, "progress", None)
    if progress is None:
        return None
    from rich.progress import Progress as RichProgress

    return progress if isinstance(progress, RichProgress) else None


class _NoBar:
    def advance(self, units: int) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmBar:
    """A tqdm bar under the ones already shown (Lightning's), gone when closed."""

    def __init__(self, name: str, total: int | None, unit: str, stream: TextIO) -> None:
        self.bar = tqdm(total=total, desc=name, unit=unit.split()[-1], leave=False, file=stream, dynamic_ncols=True)

    def advance(self, units: int) -> None:
        self.bar.update(units)

    def close(self) -> None:
        self.bar.close()


class _RichBar:
    """A task of a running rich ``Progress`` (the trainer's ``RichProgressBar``), removed when closed."""

    def __init__(self, progress: Any, name: str, total: int | None) -> None:
        self.progress = progress
        if total is None:  # Lightning's CustomProgress wants inf for an unknown total, rich's own None
            total = float("inf") if hasattr(progress, "add_custom_task") else None
        self.task = progress.add_task(name, total=total)

    def advance(self, units: int) -> None:
        self.progress.update(self.task, advance=units)

    def close(self) -> None:
        self.progress.remove_task(self.task)


@dataclass(frozen=True)
class Progress:
    """How an evaluation reports its costly steps (see the module docstring).

    Attributes:
        show: print the lines and draw the bars (rank zero); False: nothing at all (the other ranks).
        bar: draw bars where the output is a terminal; False: the lines only.
        ranks: processes that evaluate shards of the same split at the same time (the counts announced are
            all ranks' together, the bar and the estimate this rank's).
        stream: where the lines and tqdm bars go; None: ``sys.stdout`` at the time of writing.
        rich: returns the running rich ``Progress`` to add the bars to (the trainer's ``RichProgressBar``'s),
            else None; its console then prints the lines.
        clock: seconds, for the timings (``time.perf_counter``; a test injects its own).
    """

    show: bool = True
    bar: bool = True
    ranks: int = 1
    stream: TextIO | None = None
    rich: Callable[[], Any] | None = None
    clock: Clock = time.perf_counter

    @classmethod
    def of_trainer(cls, trainer: Any) -> Progress:
        """Rank zero of ``trainer`` prints; bars where its progress bar is on (``progress_bar_callback`` not
        None), in the trainer's ``RichProgressBar`` when that is the one."""
        callback = trainer.progress_bar_callback
        enabled = callback is not None and getattr(callback, "is_enabled", True)
        return cls(show=bool(trainer.is_global_zero), bar=bool(enabled), ranks=int(trainer.world_size),
                   rich=lambda: _rich_progress_of(callback))

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _rich(self) -> Any:
        return self.rich() if self.rich is not None else None

    def write(self, line: str) -> None:
        """Print ``line`` (rank zero), above any bar shown, flushed at once (a log file sees it now)."""
        if not self.show:
            return
        rich = self._rich()
        if rich is not None:
            rich.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        stream = self._stream()
        tqdm.write(line, file=stream)
        stream.flush()

    def open_bar(self, name: str, total: int | None, unit: str) -> _NoBar | _TqdmBar | _RichBar:
        """A bar over ``total`` units, or one that draws nothing (other ranks, bars off, not a terminal)."""
        if not (self.show and self.bar):
            return _NoBar()
        rich = self._rich()
        if rich is not None:
            return _RichBar(rich, name, total) if rich.console.is_terminal else _NoBar()
        stream = self._stream()
        return _TqdmBar(name, total, unit, stream) if _is_terminal(stream) else _NoBar()

    def task(self, name: str, announcement: str, total: int | None, unit: str = "clip") -> CostTask:
        """Announce a step (``name: announcement``) and open its bar over ``total`` units of this rank."""
        return CostTask(self, name, announcement, total, unit)

    @contextmanager
    def timed(self, name: str, announcement: str) -> Iterator[None]:
        """A step with no units of its own: ``name: announcement`` before, ``name: done in ...`` after."""
        self.write(f"{name}: {announcement}")
        start = self.clock()
        yield
        self.write(f"{name}: done in {format_duration(self.clock() - start)}")


class CostTask:
    """One announced step (see :meth:`Progress.task`): :meth:`step` times each unit of work, the first one
    gives the estimate of the time left (:attr:`left`), :meth:`close` prints the total."""

    def __init__(self, progress: Progress, name: str, announcement: str, total: int | None, unit: str) -> None:
        self.progress, self.name, self.total, self.unit = progress, name, total, unit
        self.done = 0
        self.seconds = 0.0
        self.left: float | None = None
        """Seconds left after the first unit: its seconds per clip x the clips still to come (None before it,
        or with no known total)."""
        self.closed = False
        progress.write(f"{name}: {announcement}")
        self.bar = progress.open_bar(name, total, unit)

    @contextmanager
    def step(self, units: int) -> Iterator[None]:
        """Time the work of the ``with`` block, which does ``units`` units, and count them."""
        start = self.progress.clock()
        yield
        self.advance(units, self.progress.clock() - start)

    def advance(self, units: int, seconds: float) -> None:
        """Count ``units`` done in ``seconds``; after the first ones, print the estimate of the time left. On one
        rank, where the total is exact, the step closes itself once it is reached."""
        first = self.done == 0 and units > 0
        self.done += units
        self.seconds += seconds
        if not self.closed:
            self.bar.advance(units)
        if first:
            self._estimate(units, seconds)
        if self.total is not None and self.done >= self.total and self.progress.ranks == 1:
            self.close()

    def _estimate(self, units: int, seconds: float) -> None:
        here = " on this rank" if self.progress.ranks > 1 else ""
        first_units = f"the first {self.unit}" if units == 1 else f"the first {plural(units, self.unit)}"
        took = f"{first_units} took {format_duration(seconds)}"
        if self.total is None:
            self.progress.write(f"{self.name}: {took}{here} (no count of the rest, so no estimate)")
            return
        rest = max(self.total - self.done, 0)
        self.left = seconds / units * rest
        if rest:
            self.progress.write(f"{self.name}: {took}: about {format_duration(self.left)} left for the other "
                                f"{plural(rest, self.unit)}{here}")

    def close(self) -> None:
        """Remove the bar and print the step's total (once)."""
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        here = " on this rank" if self.progress.ranks > 1 else ""
        self.progress.write(f"{self.name}: {plural(self.done, self.unit)}{here} in {format_duration(self.seconds)}")
