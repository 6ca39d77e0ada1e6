"""CREMA-D (6 emotions, audio + vision) from its ``VideoFlash`` videos and ``AudioWAV`` files."""

from __future__ import annotations

from typing import Literal

from data_modules.manifest import ClipRecord
from data_modules.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, MediaIndex, clip_record
from data_modules.split_lists import SplitListDataModule, audio_visual_settings
from data_modules.splits import CREMAD_CLASSES, SplitEntry, read_cremad_classes, read_cremad_split


class CremadDataModule(SplitListDataModule):
    """CREMA-D clips: the video ``<root>/<video_dir>/<clip>.flv`` (or ``.mp4``) and its audio
    ``<root>/<audio_dir>/<clip>.wav``, listed in ``train_list`` / ``test_list``
    (OGM-GE's ``train.csv`` / ``test.csv``: ``<clip>,<emotion code>``).

    Classes are NEU, HAP, SAD, FEA, DIS, ANG in that order, or the order of ``classes_file``
    (OGM-GE's ``stat.csv``) when given. The audio always comes from the WAV file (the FLV's own
    stream is not used). Batches, defaults (the paper's inputs: a 2-3 s clip gives 2-3 frames at
    1 fps and about 250 fbank frames, zero-padded to 1024), bad clips, the cache and validation
    are as for :class:`~data_modules.kinetics_sounds.KineticsSoundsDataModule`.
    """

    dataset_name = "cremad"

    def __init__(
        self,
        root: str,
        train_list: str,
        test_list: str,
        classes_file: str | None = None,
        video_dir: str = "VideoFlash",
        audio_dir: str = "AudioWAV",
        val_fraction: float = 0.0,
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
        self.classes = read_cremad_classes(classes_file) if classes_file else list(CREMAD_CLASSES)
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
        self.lists = {"train": train_list, "test": test_list}
        self.video_dir = video_dir
        self.audio_dir = audio_dir

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {split: read_cremad_split(path, self.classes) for split, path in self.lists.items()}

    def find_media(self, entries: dict[str, list[SplitEntry]]) -> list[ClipRecord]:
        videos = MediaIndex(self.root / self.video_dir, VIDEO_EXTENSIONS)
        audio = MediaIndex(self.root / self.audio_dir, AUDIO_EXTENSIONS)
        return [
            clip_record(entry.name, entry.label, split, videos, audio=audio)
            for split, split_entries in entries.items()
            for entry in split_entries
        ]
