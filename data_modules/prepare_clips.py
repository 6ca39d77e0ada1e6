"""Fill a :class:`ClipCache`: decode every clip once, in parallel worker processes, resumably.

A clip counts as done when its cache file exists (files are renamed into place complete) and
passes its CRC-32 check, so an interrupted preparation, rerun, decodes only the clips that are
not cached yet, and a corrupted file (truncated, emptied, a flipped bit) is decoded again and
reported. Clips that
fail to decode are retried on every run (the user may have fixed them) and recorded with their
reason in the cache's ``failures.json``, which the data modules read instead of probing again.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from data_modules.cache import ClipCache
from data_modules.decoding import ClipDecodeError
from data_modules.manifest import ClipRecord

if TYPE_CHECKING:
    from data_modules.clips import ClipPipeline

Outcome = tuple[str, str | None]
"""(clip name, ``None`` when cached, else the reason it failed)."""


@dataclass
class PrepareReport:
    """What a preparation did: clips in total, already cached before (and verified), newly written,
    the corrupted cache files decoded again as clip name -> what was wrong, and the failed ones as
    clip name -> (media path, reason)."""

    total: int
    already_cached: int
    written: int = 0
    corrupted: dict[str, str] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def summary(self, limit: int = 20) -> str:
        """A few lines for people: the counts, then up to ``limit`` failed clips with reasons."""
        replaced = f" ({len(self.corrupted)} of them to replace corrupted cache files)" if self.corrupted else ""
        lines = [
            f"{self.total} clips: {self.already_cached} were cached already, {self.written} decoded now{replaced}, "
            f"{len(self.failed)} failed"
        ]
        for key, problem in sorted(self.corrupted.items())[:limit]:
            lines.append(f"  corrupted cache file of {key}: {problem}; decoded again")
        for key, (path, reason) in sorted(self.failed.items())[:limit]:
            lines.append(f"  failed {key}: {path}: {reason}")
        if len(self.failed) > limit:
            lines.append(f"  ... and {len(self.failed) - limit} more (see failures.json in the cache folder)")
        return "\n".join(lines)


def unique_clips(records: Sequence[ClipRecord]) -> list[ClipRecord]:
    """One record per clip name (splits may share clips, e.g. validation on the test list);
    two different media files under one name are an error."""
    by_key: dict[str, ClipRecord] = {}
    for record in records:
        seen = by_key.setdefault(record.key, record)
        if (seen.path, seen.audio_path) != (record.path, record.audio_path):
            raise ValueError(f"clip name {record.key!r} names two different files: {seen.path} and {record.path}")
    return list(by_key.values())


def prepare_clips(
    records: Sequence[ClipRecord],
    settings: ClipPipeline,
    cache: ClipCache,
    *,
    workers: int = 2,
    compress: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Decode the clips of ``records`` that ``cache`` lacks with ``settings.extract`` and store them.

    ``workers`` processes decode in parallel (0: in this process). Returns a
    :class:`PrepareReport`; ``failures.json`` is rewritten even when interrupted (Ctrl-C).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    clips = unique_clips(records)
    cache.create()
    cache.remove_partial_files()
    corrupted, pending = {}, []
    for record in clips:  # one pass: a verified file is cached; a missing or corrupted one is decoded (again)
        if not cache.clip_file(record.key).is_file():
            pending.append(record)
        elif (problem := cache.verify(record.key)) is not None:
            corrupted[record.key] = problem
            cache.remove(record.key)
            pending.append(record)
    report = PrepareReport(total=len(clips), already_cached=len(clips) - len(pending), corrupted=corrupted)
    paths = {record.key: str(record.path) for record in pending}
    failures = {key: reason for key, reason in cache.failures().items() if key in paths}
    try:
        with _progress_bar(progress) as bar:
            task = bar.add_task("decoding clips", total=len(clips), completed=report.already_cached)
            for key, reason in _run(pending, settings, cache, workers, compress):
                if reason is None:
                    report.written += 1
                    failures.pop(key, None)
                else:
                    report.failed[key] = (paths[key], reason)
                    failures[key] = reason
                bar.advance(task)
    finally:
        cache.write_failures(failures)
    return report


def _run(
    pending: list[ClipRecord], settings: ClipPipeline, cache: ClipCache, workers: int, compress: bool
) -> Iterator[Outcome]:
    if workers == 0 or not pending:
        _init_worker(settings, cache, compress, threads=None)
        yield from map(_prepare_one, pending)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = context.Pool(min(workers, len(pending)), _init_worker, (settings, cache, compress, 1))
    try:
        yield from pool.imap_unordered(_prepare_one, pending, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


_WORKER: dict[str, object] = {}


def _init_worker(settings: ClipPipeline, cache: ClipCache, compress: bool, threads: int | None) -> None:
    """Per-process state, so that tasks carry only their record."""
    if threads is not None:  # one decoding process per core: no nested thread pools
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    _WORKER.update(settings=settings, cache=cache, compress=compress)


def _prepare_one(record: ClipRecord) -> Outcome:
    settings, cache = _WORKER["settings"], _WORKER["cache"]
    if record.problem is not None:
        return record.key, record.problem
    try:
        arrays = settings.extract(record)
    except ClipDecodeError as error:
        if error.reason is None:
            return record.key, str(error)
        return record.key, error.reason if error.path == str(record.path) else f"{error.path}: {error.reason}"
    cache.write(record.key, arrays, stepwise=settings.stepwise_arrays, compress=bool(_WORKER["compress"]))
    return record.key, None


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
