"""Readers of the official split / annotation files of the real datasets.

Each reader returns :class:`SplitEntry` s (a clip name and a class index); the data modules
then find the media files (see :mod:`data_modules.media`). Formats (see
docs/datasets.md, "Split-file formats"):

- Kinetics-Sounds, CRMT lists: ``<clip name> <label 0..30>`` (space separated);
  OGM-GE lists: ``<clip name>,<duration s>,<label 0..30>``; Kinetics annotation CSVs:
  ``label,youtube_id,time_start,time_end,split[,...]`` with a header, kept for the 31
  :data:`KS_CLASSES` and named ``<youtube_id>_<start:06d>_<end:06d>``.
- VGGSound ``vggsound.csv``: ``<youtube_id>,<start s>,<label text>,<train|test>``, no header.
- UCF101 ``classInd.txt`` (``<1..101> <Class>``), ``trainlist0N.txt`` (``<Class>/<file>.avi <index>``)
  and ``testlist0N.txt`` (``<Class>/<file>.avi``).
- CREMA-D ``train.csv`` / ``test.csv``: ``<clip name>,<emotion code>``; classes in
  :data:`CREMAD_CLASSES` order (that of OGM-GE's ``stat.csv``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

StrPath = str | os.PathLike[str]

KS_CLASSES: Final = (
    "blowing nose",
    "blowing out candles",
    "bowling",
    "chopping wood",
    "dribbling basketball",
    "laughing",
    "mowing lawn",
    "playing accordion",
    "playing bagpipes",
    "playing bass guitar",
    "playing clarinet",
    "playing drums",
    "playing guitar",
    "playing harmonica",
    "playing keyboard",
    "playing organ",
    "playing piano",
    "playing saxophone",
    "playing trombone",
    "playing trumpet",
    "playing violin",
    "playing xylophone",
    "ripping paper",
    "shoveling snow",
    "shuffling cards",
    "singing",
    "stomping grapes",
    "tap dancing",
    "tapping guitar",
    "tapping pen",
    "tickling",
)
"""The 31 Kinetics-400 classes of Kinetics-Sounds, in alphabetical order: the class index
given to clips read from a Kinetics annotation CSV. (The CRMT and OGM-GE lists carry their own
indices 0..30.)"""

CREMAD_CLASSES: Final = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
"""CREMA-D emotion codes in class-index order (OGM-GE's ``stat.csv``)."""

KINETICS_COLUMNS: Final = ("label", "youtube_id", "time_start", "time_end")


class SplitFileError(ValueError):
    """A split file is malformed; the message names the file and the line."""


@dataclass(frozen=True)
class SplitEntry:
    """One clip of a split file: its ``name`` in the dataset and its class index ``label``."""

    name: str
    label: int


def _lines(path: StrPath) -> list[tuple[int, str]]:
    """Non-empty lines of a text file as ``(line number, stripped text)``, without a BOM."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"split file {file} not found")
    text = file.read_text(encoding="utf-8-sig")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _label(path: StrPath, number: int, text: str, num_classes: int) -> int:
    try:
        label = int(text)
    except ValueError:
        raise SplitFileError(f"{path}, line {number}: label {text!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise SplitFileError(f"{path}, line {number}: label {label} is outside [0, {num_classes})")
    return label


def read_ks_split(path: StrPath) -> list[SplitEntry]:
    """A Kinetics-Sounds split in any of the three formats (detected from the first line)."""
    lines = _lines(path)
    if not lines:
        return []
    first = lines[0][1]
    if first.split(",")[: len(KINETICS_COLUMNS)] == list(KINETICS_COLUMNS):
        return _read_kinetics_csv(path)
    entries = []
    for number, line in lines:
        fields = line.split(",") if "," in line else line.split()
        if len(fields) not in (2, 3):
            raise SplitFileError(
                f"{path}, line {number}: expected '<clip> <label>' (CRMT) or '<clip>,<seconds>,<label>' (OGM-GE), "
                f"got {line!r}"
            )
        entries.append(SplitEntry(fields[0], _label(path, number, fields[-1], len(KS_CLASSES))))
    return entries


def _read_kinetics_csv(path: StrPath) -> list[SplitEntry]:
    """Rows of a Kinetics annotation CSV whose class is one of :data:`KS_CLASSES`."""
    index = {name: label for label, name in enumerate(KS_CLASSES)}
    entries = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            label = index.get(row["label"].strip().strip('"'))
            if label is None:
                continue
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise SplitFileError(f"{path}: bad time_start / time_end in row {row}") from None
            entries.append(SplitEntry(f"{row['youtube_id']}_{start:06d}_{end:06d}", label))
    return entries


def read_vggsound_csv(path: StrPath) -> tuple[list[str], dict[str, list[SplitEntry]]]:
    """Classes (sorted label texts) and the ``train`` / ``test`` entries of ``vggsound.csv``.

    A clip is named ``<youtube_id>_<start:06d>`` (the VGGSound downloader's file name).
    """
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row:
                continue
            if len(row) != 4 or row[3].strip() not in ("train", "test"):
                raise SplitFileError(
                    f"{path}, line {number}: expected '<youtube_id>,<start>,<label>,<train|test>', got {row}"
                )
            try:
                start = int(float(row[1]))
            except ValueError:
                raise SplitFileError(f"{path}, line {number}: start {row[1]!r} is not a number") from None
            rows.append((f"{row[0]}_{start:06d}", row[2].strip(), row[3].strip()))
    classes = sorted({label for _, label, _ in rows})
    index = {name: label for label, name in enumerate(classes)}
    splits: dict[str, list[SplitEntry]] = {"train": [], "test": []}
    for name, label, split in rows:
        splits[split].append(SplitEntry(name, index[label]))
    return classes, splits


def read_ucf101_classes(splits_dir: StrPath) -> list[str]:
    """Class names of ``classInd.txt`` in index order (the file's 1-based indices must be 1..N)."""
    path = Path(splits_dir) / "classInd.txt"
    classes = []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[0] != str(len(classes) + 1):
            raise SplitFileError(f"{path}, line {number}: expected '{len(classes) + 1} <Class>', got {line!r}")
        classes.append(fields[1])
    return classes


def read_ucf101_split(splits_dir: StrPath, split: int, part: str, classes: Sequence[str]) -> list[SplitEntry]:
    """The ``part`` (``train`` or ``test``) list of UCF101 split ``split`` (1-3); a clip is named by
    its file name without extension, its class is that of its folder (case-insensitive)."""
    if split not in (1, 2, 3) or part not in ("train", "test"):
        raise ValueError(f"UCF101 has splits 1-3 of train / test lists, got split {split} {part!r}")
    path = Path(splits_dir) / f"{part}list0{split}.txt"
    index = {name.lower(): label for label, name in enumerate(classes)}
    entries = []
    for number, line in _lines(path):
        relative = line.split()[0]
        folder, _, file = relative.replace("\\", "/").rpartition("/")
        label = index.get(folder.lower())
        if label is None:
            raise SplitFileError(f"{path}, line {number}: class folder {folder!r} is not in classInd.txt")
        entries.append(SplitEntry(Path(file).stem, label))
    return entries


def read_cremad_classes(path: StrPath) -> list[str]:
    """Emotion codes of a ``stat.csv``, one a line, in class-index order."""
    return [line.split(",")[0] for _, line in _lines(path)]


def read_cremad_split(path: StrPath, classes: Sequence[str] = CREMAD_CLASSES) -> list[SplitEntry]:
    """A CREMA-D ``<clip name>,<emotion code>`` list."""
    index = {code: label for label, code in enumerate(classes)}
    entries = []
    for number, line in _lines(path):
        name, _, code = line.partition(",")
        if code.strip() not in index:
            raise SplitFileError(f"{path}, line {number}: emotion {code.strip()!r} is not one of {', '.join(classes)}")
        entries.append(SplitEntry(name.strip(), index[code.strip()]))
    return entries


def hold_out(entries: Sequence[SplitEntry], fraction: float, seed: int) -> tuple[list[SplitEntry], list[SplitEntry]]:
    """Split ``entries`` into (kept, held out): ``round(fraction * n_c)`` random clips of each class c
    (seeded by ``seed`` and the class) are held out, e.g. as a validation split."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        by_class.setdefault(entry.label, []).append(i)
    held: set[int] = set()
    for label, members in sorted(by_class.items()):
        count = round(fraction * len(members))
        chosen = np.random.default_rng([seed, label]).permutation(len(members))[:count]
        held.update(members[i] for i in chosen)
    return (
        [entry for i, entry in enumerate(entries) if i not in held],
        [entry for i, entry in enumerate(entries) if i in held],
    )
