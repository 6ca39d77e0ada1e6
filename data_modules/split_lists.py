"""Base of the real-dataset modules: official split lists + a folder of downloaded media."""

from __future__ import annotations

from pathlib import Path

from data_modules.clips import BadClipPolicy, ClipPipeline, ClipSettings, MediaDataModule
from data_modules.manifest import ClipRecord
from data_modules.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, MediaIndex, clip_record
from data_modules.splits import SplitEntry, hold_out


class SplitListDataModule(MediaDataModule):
    """A :class:`MediaDataModule` whose clips come from a dataset's own split lists.

    Subclasses implement :meth:`split_entries` (``train`` and ``test``, and ``val`` when the
    dataset has one) and may redirect :meth:`media_folders` or give :meth:`clip_aliases`, which
    :meth:`find_media` uses to find each entry's files. Without
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
        num_workers: int | None,
        persistent_workers: bool,
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
            persistent_workers=persistent_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.root = Path(root)
        self.audio_root: Path | None = None
        self.val_fraction = val_fraction
        self._records: list[ClipRecord] | None = None

    @property
    def source(self) -> str:
        return str(self.root)

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        """The entries of the dataset's lists, by split."""
        raise NotImplementedError

    def media_folders(self) -> tuple[Path, Path | None]:
        """The folder of the videos and, when the audio comes from separate files, of the audio."""
        return self.root, self.audio_root

    def clip_aliases(self, name: str) -> tuple[str, ...]:
        """Other file names clip ``name`` may have; none by default."""
        return ()

    def find_media(self, entries: dict[str, list[SplitEntry]]) -> list[ClipRecord]:
        """One record per entry (in order), with the media files found under :meth:`media_folders`."""
        video_folder, audio_folder = self.media_folders()
        videos = MediaIndex(video_folder, VIDEO_EXTENSIONS)
        audio = MediaIndex(audio_folder, AUDIO_EXTENSIONS) if audio_folder is not None else None
        return [
            clip_record(entry.name, entry.label, split, videos, audio=audio, aliases=self.clip_aliases(entry.name))
            for split, split_entries in entries.items()
            for entry in split_entries
        ]

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


class AudioVisualSplitListDataModule(SplitListDataModule):
    """The common constructor of the audio + vision datasets (Kinetics-Sounds, VGGSound, CREMA-D).

    ``clip`` says how a clip becomes inputs; its defaults are the paper's (see
    :class:`~data_modules.clips.ClipSettings`). Subclasses give ``num_classes`` and their own split
    and media arguments, and pass the rest through ``**kwargs``.
    """

    def __init__(
        self,
        *,
        root: str,
        num_classes: int,
        clip: ClipSettings = ClipSettings(),
        val_fraction: float = 0.0,
        cache_dir: str | None = "data/cache",
        batch_size: int = 64,
        num_workers: int | None = None,
        persistent_workers: bool = False,
        on_bad_clip: BadClipPolicy = "raise",
        seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            num_classes=num_classes,
            settings=clip,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=persistent_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
