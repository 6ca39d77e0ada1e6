"""Base of the real-dataset modules: official split lists + a folder of downloaded media."""

from __future__ import annotations

from pathlib import Path

from data_modules.clips import BadClipPolicy, ClipPipeline, ClipSettings, MediaDataModule
from data_modules.manifest import ClipRecord
from data_modules.splits import SplitEntry, hold_out


class SplitListDataModule(MediaDataModule):
    """A :class:`MediaDataModule` whose clips come from a dataset's own split lists.

    Subclasses implement :meth:`split_entries` (``train`` and ``test``, and ``val`` when the
    dataset has one) and :meth:`find_media` (entries -> records with their media files). Without
    a validation list, ``val_fraction > 0`` holds out that fraction of each training class
    (seeded by ``seed``); ``val_fraction = 0`` validates on the test list, as the official CRMT
    code does (it picks checkpoints on test: keep that in mind when reporting).
    """

    def __init__(
        self,
        *,
        root: str,
        num_classes: int,
        settings: ClipPipeline,
        val_fraction: float,
        batch_size: int,
        num_workers: int,
        on_bad_clip: BadClipPolicy,
        seed: int,
        cache_dir: str | None,
    ) -> None:
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        super().__init__(
            num_classes=num_classes,
            settings=settings,
            batch_size=batch_size,
            num_workers=num_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.root = Path(root)
        self.val_fraction = val_fraction
        self._records: list[ClipRecord] | None = None

    @property
    def source(self) -> str:
        return str(self.root)

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        """The entries of the dataset's lists, by split."""
        raise NotImplementedError

    def find_media(self, entries: dict[str, list[SplitEntry]]) -> list[ClipRecord]:
        """One record per entry (in order), with the media files found under ``root``."""
        raise NotImplementedError

    def read_records(self) -> list[ClipRecord]:
        """The records of every split (read once; the media folder is walked once)."""
        if self._records is None:
            entries = self.split_entries()
            if "val" not in entries:
                if self.val_fraction > 0:
                    entries["train"], entries["val"] = hold_out(entries["train"], self.val_fraction, self.seed)
                else:
                    entries["val"] = entries["test"]
            self._records = self.find_media(entries)
        return self._records


def audio_visual_settings(
    *,
    sample_rate: int,
    num_mel_bins: int,
    audio_frames: int,
    audio_mean: float,
    audio_std: float,
    audio_std_factor: float,
    fps: float | None,
    num_frames: int,
    frame_size: int,
    visual_mean: tuple[float, float, float],
    visual_std: tuple[float, float, float],
    augment: bool,
) -> ClipSettings:
    """:class:`ClipSettings` from a data module's flat arguments (YAML gives lists, not tuples)."""
    return ClipSettings(
        sample_rate=sample_rate,
        num_mel_bins=num_mel_bins,
        audio_frames=audio_frames,
        audio_mean=audio_mean,
        audio_std=audio_std,
        audio_std_factor=audio_std_factor,
        fps=fps,
        num_frames=num_frames,
        frame_size=frame_size,
        visual_mean=tuple(visual_mean),
        visual_std=tuple(visual_std),
        augment=augment,
    )
