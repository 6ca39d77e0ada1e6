"""VGGSound (309 classes, audio + vision) from the user's downloaded clips and ``vggsound.csv``."""

from __future__ import annotations

from typing import Literal

from data_modules.manifest import ClipRecord
from data_modules.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, YOUTUBE_ID_LENGTH, MediaIndex, clip_record
from data_modules.split_lists import SplitListDataModule, audio_visual_settings
from data_modules.splits import SplitEntry, read_vggsound_csv

CLIP_SECONDS = 10
"""Length of a VGGSound clip: ``<id>_<start>`` covers [start, start + 10) s."""


def vggsound_aliases(name: str) -> tuple[str, ...]:
    """Other file names of clip ``<id>_<start:06d>``: ``<id>_<start>`` (OGM-GE's) and
    ``<id>_<start:06d>_<end:06d>`` (Kinetics-style downloaders)."""
    youtube_id, start = name[:YOUTUBE_ID_LENGTH], int(name[YOUTUBE_ID_LENGTH + 1 :])
    return f"{youtube_id}_{start}", f"{youtube_id}_{start:06d}_{start + CLIP_SECONDS:06d}"


class VGGSoundDataModule(SplitListDataModule):
    """VGGSound clips under ``root`` with the classes and splits of ``annotations`` (``vggsound.csv``).

    Classes are the csv's label texts sorted alphabetically (309 for the official file; the
    count is read in ``__init__``). A clip is the file ``<youtube_id>_<start:06d>.<ext>``,
    ``<youtube_id>_<start>.<ext>`` or ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under
    ``root``; audio comes from the video unless ``audio_root`` holds the clips' audio files
    (e.g. OGM-GE's extracted ``.wav``). Batches, defaults (the paper's inputs), bad clips, the
    cache and validation are as for
    :class:`~data_modules.kinetics_sounds.KineticsSoundsDataModule`.
    """

    dataset_name = "vggsound"

    def __init__(
        self,
        root: str,
        annotations: str,
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
        self.classes, self.entries = read_vggsound_csv(annotations)
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
            num_classes=len(self.classes),
            settings=settings,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.save_hyperparameters()
        self.audio_root = audio_root

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {split: list(entries) for split, entries in self.entries.items()}

    def find_media(self, entries: dict[str, list[SplitEntry]]) -> list[ClipRecord]:
        videos = MediaIndex(self.root, VIDEO_EXTENSIONS)
        audio = MediaIndex(self.audio_root, AUDIO_EXTENSIONS) if self.audio_root else None
        return [
            clip_record(entry.name, entry.label, split, videos, audio=audio, aliases=vggsound_aliases(entry.name))
            for split, split_entries in entries.items()
            for entry in split_entries
        ]
