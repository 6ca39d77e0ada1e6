"""VGGSound (309 classes, audio + vision) from the user's downloaded clips and ``vggsound.csv``."""

from __future__ import annotations

from pathlib import Path

from data_modules.media import YOUTUBE_ID_LENGTH
from data_modules.split_lists import AudioVisualSplitListDataModule
from data_modules.splits import SplitEntry, read_vggsound_csv

CLIP_SECONDS = 10
"""Length of a VGGSound clip: ``<id>_<start>`` covers [start, start + 10) s."""


def vggsound_aliases(name: str) -> tuple[str, ...]:
    """Other file names of clip ``<id>_<start:06d>``: ``<id>_<start>`` (OGM-GE's) and
    ``<id>_<start:06d>_<end:06d>`` (Kinetics-style downloaders)."""
    youtube_id, start = name[:YOUTUBE_ID_LENGTH], int(name[YOUTUBE_ID_LENGTH + 1 :])
    return f"{youtube_id}_{start}", f"{youtube_id}_{start:06d}_{start + CLIP_SECONDS:06d}"


class VGGSoundDataModule(AudioVisualSplitListDataModule):
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
        *,
        audio_root: str | None = None,
        **kwargs,
    ) -> None:
        self.classes, self.entries = read_vggsound_csv(annotations)
        super().__init__(root=root, num_classes=len(self.classes), **kwargs)
        self.save_hyperparameters()
        self.audio_root = Path(audio_root) if audio_root else None

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {split: list(entries) for split, entries in self.entries.items()}

    def clip_aliases(self, name: str) -> tuple[str, ...]:
        return vggsound_aliases(name)
