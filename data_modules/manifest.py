"""The clip manifest: a CSV file with header ``path,label,split``, one clip per row.

Rows of the ``predict`` split are clips to predict (``python -m crmt predict``); their label may be left
empty (unknown, :data:`UNKNOWN_LABEL`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SPLITS: Final = ("train", "val", "test")
PREDICT_SPLIT: Final = "predict"
UNKNOWN_LABEL: Final = -1
"""The label of a ``predict`` row whose label is left empty."""
COLUMNS: Final = ("path", "label", "split")


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class ClipRecord:
    """One clip: its media ``path`` (for a manifest row, joined onto the manifest's folder), its
    class ``label`` and its ``split``.

    ``audio_path`` names a separate audio file (else the audio is ``path``'s own stream);
    ``name`` is the clip's name in its dataset (the cache key; ``path``'s stem when empty);
    ``problem`` is a reason the clip is unusable that was known before probing (e.g. no media
    file was found for it).
    """

    path: Path
    label: int
    split: str
    audio_path: Path | None = None
    name: str = ""
    problem: str | None = None

    @property
    def key(self) -> str:
        """The clip's name in its dataset: ``name``, else the file name without extension."""
        return self.name or self.path.stem


def read_manifest(path: str | os.PathLike[str], num_classes: int | None = None) -> list[ClipRecord]:
    """Read every row of the manifest at ``path``.

    Relative clip paths are resolved against the manifest's folder. Labels must be integers
    ``>= 0`` (and ``< num_classes`` when given), or empty in the ``predict`` split (unknown); splits one of
    ``train``, ``val``, ``test``, ``predict``.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise ManifestError(
                f"manifest {manifest}: header must contain {', '.join(COLUMNS)}; missing {', '.join(missing)}"
            )
        return [_record(manifest, reader.line_num, row, num_classes) for row in reader]


def _record(manifest: Path, line: int, row: dict[str, str], num_classes: int | None) -> ClipRecord:
    """Validate one CSV row (``line`` is its 1-based line number in the file)."""
    where = f"manifest {manifest}, line {line}"
    clip, label_text, split = (row[column] for column in COLUMNS)
    if not clip:
        raise ManifestError(f"{where}: empty path")
    if split == PREDICT_SPLIT and not label_text.strip():
        return ClipRecord(path=manifest.parent / clip, label=UNKNOWN_LABEL, split=split)
    try:
        label = int(label_text)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: label {label_text!r} is not an integer") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ManifestError(f"{where}: label {label} is outside {bound} (num_classes={num_classes})")
    if split not in (*SPLITS, PREDICT_SPLIT):
        raise ManifestError(f"{where}: split {split!r} is not one of {', '.join((*SPLITS, PREDICT_SPLIT))}")
    return ClipRecord(path=manifest.parent / clip, label=label, split=split)
