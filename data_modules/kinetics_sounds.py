"""Kinetics-Sounds (31 classes, audio + vision) from the user's downloaded Kinetics clips."""

from __future__ import annotations

from typing import Literal

from data_modules.manifest import ClipRecord
from data_modules.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, MediaIndex, clip_record
from data_modules.split_lists import SplitListDataModule, audio_visual_settings
from data_modules.splits import KS_CLASSES, SplitEntry, read_ks_split


class KineticsSoundsDataModule(SplitListDataModule):
    """Kinetics-Sounds clips under ``root`` (any layout: files are found by clip name).

    ``train_list`` / ``test_list`` (and optionally ``val_list``) are CRMT lists
    (``ks_train_overlap.txt``: ``<clip> <label>``), OGM-GE lists (``<clip>,<seconds>,<label>``)
    or Kinetics-400 annotation CSVs (``train.csv``, ``validate.csv``), filtered to the 31
    :data:`~data_modules.splits.KS_CLASSES`. A clip ``<youtube_id>_<start>_<end>`` is the file
    ``<youtube_id>_<start>_<end>.<ext>``; a bare YouTube id (CRMT's test list) matches the single
    file starting with it. Audio comes from each video's own stream unless ``audio_root`` holds
    ``<clip>.wav`` files.

    Batches: ``visual`` (B, 3, num_frames, frame_size, frame_size) and ``audio``
    (B, 1, num_mel_bins, audio_frames) float32, ``label`` and ``index`` (B,) int64. The defaults
    are the paper's inputs: frames at 1 fps, 3 per clip (random per segment, cropped and flipped
    for training; centred for evaluation), 224 x 224, ImageNet normalisation; a 128-bin Kaldi
    fbank (10 ms shift) padded / cut to 1024 frames, normalised with mean -4.503877 and
    ``audio_std_factor * audio_std`` = 2 x 5.141276, as the official code divides by twice the
    std. See :class:`~data_modules.clips.ClipSettings`, :class:`~data_modules.clips.MediaDataModule`
    (bad clips, cache) and :class:`~data_modules.split_lists.SplitListDataModule` (validation).
    """

    dataset_name = "ks"

    def __init__(
        self,
        root: str,
        train_list: str,
        test_list: str,
        val_list: str | None = None,
        val_fraction: float = 0.0,
        audio_root: str | None = None,
        cache_dir: str | None = "data/cache",
        batch_size: int = 64,
        num_workers: int = 4,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        audio_frames: int = 1024,
        audio_mean: float = -4.503877,
        audio_std: float = 5.141276,
        audio_std_factor: float = 2.0,
        fps: float | None = 1.0,
        num_frames: int = 3,
        frame_size: int = 224,
        visual_mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        visual_std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        augment: bool = True,
        on_bad_clip: Literal["raise", "skip"] = "raise",
        seed: int = 0,
    ) -> None:
        settings = audio_visual_settings(
            sample_rate=sample_rate,
            num_mel_bins=num_mel_bins,
            audio_frames=audio_frames,
            audio_mean=audio_mean,
            audio_std=audio_std,
            audio_std_factor=audio_std_factor,
            fps=fps,
            num_frames=num_frames,
            frame_size=frame_size,
            visual_mean=visual_mean,
            visual_std=visual_std,
            augment=augment,
        )
        super().__init__(
            root=root,
            num_classes=len(KS_CLASSES),
            settings=settings,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.save_hyperparameters()
        self.lists = {"train": train_list, "test": test_list, **({"val": val_list} if val_list else {})}
        self.audio_root = audio_root

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {split: read_ks_split(path) for split, path in self.lists.items()}

    def find_media(self, entries: dict[str, list[SplitEntry]]) -> list[ClipRecord]:
        videos = MediaIndex(self.root, VIDEO_EXTENSIONS)
        audio = MediaIndex(self.audio_root, AUDIO_EXTENSIONS) if self.audio_root else None
        return [
            clip_record(entry.name, entry.label, split, videos, audio=audio)
            for split, split_entries in entries.items()
            for entry in split_entries
        ]
