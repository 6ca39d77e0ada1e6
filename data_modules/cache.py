"""The preprocessing cache: one ``.npz`` file per decoded clip, keyed by the clip's name.

Layout: ``<cache_dir>/<dataset>-<digest>/`` holds ``settings.json`` (the settings that shaped
the cached arrays; ``digest`` is their hash, so changing e.g. ``frame_size`` uses a new
folder instead of stale arrays), ``clips/<xx>/<clip name>.npz`` (``xx``: two hex digits of the
name's hash, to keep folders small) and ``failures.json`` (clip name -> reason for the clips
that could not be decoded).

Why per-clip files and not Lightning's ``litdata`` chunks:

- The training loader stays a map-style dataset, so under (multi-node) DDP Lightning's
  ``DistributedSampler`` hands each rank its own share of indices, and a rank opens only the
  files of its share: no rank reads everything. The sample index is the dataset position,
  stable across epochs, which CRMT's step 2 needs to look up cached scores; shuffling, seeding
  and checkpoint resume are Lightning's usual ones (the Trainer does not restore a
  ``StreamingDataLoader``'s state, litData#775, and litData reports DDP hangs, #408, #129).
- Preparation is resumable clip by clip: each file is written to a temporary name and renamed,
  so a clip is either completely cached or absent, and a rerun decodes only absent clips. A
  chunked format is written in one go and cannot say which samples are complete.
- Every file is verifiable: an ``.npz`` is a zip archive holding a CRC-32 of each array.
  :meth:`ClipCache.has` counts a file as cached only if its archive directory reads (a
  truncated or empty file does not); :meth:`ClipCache.verify` checks every CRC (``prepare``
  runs it on every cached file and re-decodes the corrupted ones), and reading an array checks
  its CRC too. Files get the permissions the umask allows (group-readable by default), so a
  cache can be shared.
- A sample reads only what it uses. Arrays named in ``stepwise`` (the frames: a clip keeps
  ten, a sample uses three) are stored one member per time step (``frames/00000``, ...), which
  :meth:`ClipCache.open` reads, CRC included, only when indexed (:class:`CachedSteps`). Files of
  the first layout (one ``frames`` member) still read, whole.
- A clip of the paper's inputs is about 2 MB (1024 x 128 float32 filterbank + ten 224 x 224
  RGB frames), far above the size where per-file overhead matters, and ``--compress`` (zlib)
  trades some CPU for roughly half the disk. Object storage (S3) is where litdata's chunks
  would pay off; the dataset modules do not need it for local or network file systems.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import numpy as np
import torch

from data_modules.decoding import ClipDecodeError

CACHE_VERSION: Final = 1
"""Bump when the cached arrays change for unchanged settings, so old caches are not reused."""
SETTINGS_NAME: Final = "settings.json"
FAILURES_NAME: Final = "failures.json"
_TEMPORARY_SUFFIX: Final = ".partial"
STEP_SEPARATOR: Final = "/"
"""Member ``<name>/<step>`` of a cache file holds step ``step`` (zero-padded) of the stepwise array ``name``."""


class CacheReadError(ClipDecodeError):
    """A cache file (or one of its members) cannot be read; the message names the file."""


class CachedSteps:
    """The steps of one stepwise array of an open cache file, read on indexing: ``len(steps)`` is
    the array's leading size, ``steps[indices]`` the (len(indices), ...) array of those steps
    (each member read once, its CRC-32 checked), as ``array[indices]`` of the whole array would be."""

    def __init__(self, archive: np.lib.npyio.NpzFile, name: str, count: int, path: Path) -> None:
        self._archive, self._name, self._count, self._path = archive, name, count, path

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, indices: Sequence[int]) -> np.ndarray:
        if not indices:
            raise IndexError(f"no steps asked of {self._name!r} in cache file {self._path}")
        bad = [index for index in indices if not 0 <= index < self._count]
        if bad:
            raise IndexError(f"steps {bad} of {self._name!r} are outside 0..{self._count - 1} ({self._path})")
        read = {index: _read_member(self._archive, f"{self._name}{STEP_SEPARATOR}{index:05d}", self._path)
                for index in dict.fromkeys(indices)}
        return np.stack([read[index] for index in indices])


ClipArray = np.ndarray | CachedSteps
"""One extracted array of a clip: whole (decoded now, or cached whole) or its cached steps."""


def take_steps(array: ClipArray, indices: Sequence[int]) -> torch.Tensor:
    """Steps ``indices`` of ``array``'s leading axis as a tensor: only those are read from a cache file."""
    return torch.from_numpy(np.ascontiguousarray(array[list(indices)]))


class ClipCache:
    """Cached arrays of the clips of one dataset under one set of preprocessing settings."""

    def __init__(self, folder: str | os.PathLike[str], fields: Mapping[str, object]) -> None:
        self.folder = Path(folder)
        self.fields = dict(fields)

    @classmethod
    def for_settings(cls, cache_dir: str | os.PathLike[str], dataset: str, fields: Mapping[str, object]) -> ClipCache:
        """The cache of ``dataset`` under ``cache_dir`` for the preprocessing settings ``fields``."""
        text = json.dumps({"cache_version": CACHE_VERSION, "dataset": dataset, **fields}, sort_keys=True)
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        return cls(Path(cache_dir) / f"{dataset}-{digest}", fields)

    def exists(self) -> bool:
        """Whether preparation has started here (``settings.json`` is written first)."""
        return (self.folder / SETTINGS_NAME).is_file()

    def create(self) -> None:
        """Make the folder and record the settings; an existing folder must hold the same settings."""
        settings_file = self.folder / SETTINGS_NAME
        if settings_file.is_file():
            recorded = json.loads(settings_file.read_text())
            if recorded != self.fields:
                raise ValueError(f"cache {self.folder} was made with settings {recorded}, not {self.fields}")
            return
        (self.folder / "clips").mkdir(parents=True, exist_ok=True)
        _write_atomically(settings_file, json.dumps(self.fields, indent=2, sort_keys=True).encode())

    def clip_file(self, key: str) -> Path:
        """Where the arrays of clip ``key`` live (whether or not they are there yet)."""
        if not key or key.startswith(".") or any(char in key for char in "/\\\0"):
            raise ValueError(f"clip name {key!r} cannot name a cache file (empty, leading '.', or a path separator)")
        shard = hashlib.sha1(key.encode()).hexdigest()[:2]
        return self.folder / "clips" / shard / f"{key}.npz"

    def has(self, key: str) -> bool:
        """Whether clip ``key`` has a cache file whose archive directory reads (cheap: no array is read)."""
        path = self.clip_file(key)
        if not path.is_file():
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                return bool(archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    def verify(self, key: str) -> str | None:
        """Why the cache file of clip ``key`` is unusable (missing, unreadable, a failed CRC-32), or ``None``."""
        path = self.clip_file(key)
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            return f"unreadable ({error})"
        if damaged is not None:
            return f"CRC-32 check failed for {damaged}"
        return None if names else "holds no arrays"

    @contextmanager
    def open(self, key: str) -> Iterator[dict[str, ClipArray]]:
        """The cached arrays of clip ``key`` while the block runs: whole arrays, and a
        :class:`CachedSteps` per stepwise array, whose steps are read when indexed. A missing file
        raises ``FileNotFoundError``; any other failure to read, here or in the block's reads, a
        :class:`CacheReadError` naming the file."""
        path = self.clip_file(key)
        try:
            archive = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise _unreadable(path, error) from error
        with archive:
            steps: dict[str, int] = {}
            arrays: dict[str, ClipArray] = {}
            for member in archive.files:
                name, separator, _ = member.rpartition(STEP_SEPARATOR)
                if separator:
                    steps[name] = steps.get(name, 0) + 1
                else:
                    arrays[member] = _read_member(archive, member, path)
            arrays.update({name: CachedSteps(archive, name, count, path) for name, count in steps.items()})
            yield arrays

    def write(
        self, key: str, arrays: Mapping[str, np.ndarray], *, stepwise: Collection[str] = (), compress: bool = False
    ) -> None:
        """Store ``arrays`` for clip ``key`` (those named in ``stepwise`` one member per step of their
        leading axis): written under a temporary name, then renamed into place."""
        members: dict[str, np.ndarray] = {}
        for name, array in arrays.items():
            if STEP_SEPARATOR in name:
                raise ValueError(f"array name {name!r} of clip {key!r} contains {STEP_SEPARATOR!r}")
            if name in stepwise and len(array) > 0:
                members.update({f"{name}{STEP_SEPARATOR}{step:05d}": array[step] for step in range(len(array))})
            else:
                members[name] = array
        path = self.clip_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        save = np.savez_compressed if compress else np.savez
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=_TEMPORARY_SUFFIX, delete=False) as handle:
            save(handle, **members)
        _publish(handle.name, path)

    def remove(self, key: str) -> None:
        """Delete the cache file of clip ``key`` (if any)."""
        self.clip_file(key).unlink(missing_ok=True)

    def remove_partial_files(self) -> int:
        """Delete temporary files left by an interrupted preparation; returns how many."""
        leftovers = list((self.folder / "clips").glob(f"*/*{_TEMPORARY_SUFFIX}"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return len(leftovers)

    def failures(self) -> dict[str, str]:
        """Clip name -> reason, for the clips the last preparation could not decode."""
        path = self.folder / FAILURES_NAME
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_failures(self, failures: Mapping[str, str]) -> None:
        _write_atomically(self.folder / FAILURES_NAME, json.dumps(dict(sorted(failures.items())), indent=1).encode())


def _unreadable(path: Path, error: BaseException) -> CacheReadError:
    return CacheReadError.for_clip(path, f"unreadable cache file ({error}); `make prepare` decodes it again")


def _read_member(archive: np.lib.npyio.NpzFile, member: str, path: Path) -> np.ndarray:
    """One array of an open cache file (its CRC-32 checked by the zip reader); failures name the file."""
    try:
        return archive[member]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from error


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=_TEMPORARY_SUFFIX, delete=False) as handle:
        handle.write(data)
    _publish(handle.name, path)


def _publish(temporary: str, path: Path) -> None:
    """Give ``temporary`` (created 0600) the mode the umask allows a new file, then rename it to ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)
