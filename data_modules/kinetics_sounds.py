"""Kinetics-Sounds (31 classes, audio + vision) from the user's downloaded Kinetics clips."""

from __future__ import annotations

from pathlib import Path

from data_modules.split_lists import AudioVisualSplitListDataModule
from data_modules.splits import KS_CLASSES, SplitEntry, read_ks_split


class KineticsSoundsDataModule(AudioVisualSplitListDataModule):
    """Kinetics-Sounds clips under ``root`` (any layout: files are found by clip name).

    ``train_list`` / ``test_list`` (and optionally ``val_list``) are CRMT lists
    (``ks_train_overlap.txt``: ``<clip> <label>``), OGM-GE lists (``<clip>,<seconds>,<label>``)
    or Kinetics-400 annotation CSVs (``train.csv``, ``validate.csv``), filtered to the 31
    :data:`~data_modules.splits.KS_CLASSES`. A clip ``<youtube_id>_<start>_<end>`` is the file
    ``<youtube_id>_<start>_<end>.<ext>``; a bare YouTube id (CRMT's test list) matches the single
    file starting with it. Audio comes from each video's own stream unless ``audio_root`` holds
    ``<clip>.wav`` files.

    Batches: ``visual`` (B, 3, num_frames, frame_size, frame_size) and ``audio``
    (B, 1, num_mel_bins, audio_frames) float32, ``label`` and ``index`` (B,) int64. The other
    arguments and their defaults (the paper's inputs) are those of
    :class:`~data_modules.split_lists.AudioVisualSplitListDataModule`; see also
    :class:`~data_modules.clips.MediaDataModule` (bad clips, cache) and
    :class:`~data_modules.split_lists.SplitListDataModule` (validation).
    """

    dataset_name = "ks"

    def __init__(
        self,
        root: str,
        train_list: str,
        test_list: str,
        val_list: str | None = None,
        *,
        audio_root: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root=root, num_classes=len(KS_CLASSES), **kwargs)
        self.save_hyperparameters()
        self.lists = {"train": train_list, "test": test_list, **({"val": val_list} if val_list else {})}
        self.audio_root = Path(audio_root) if audio_root else None

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {split: read_ks_split(path) for split, path in self.lists.items()}
