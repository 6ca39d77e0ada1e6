"""CREMA-D (6 emotions, audio + vision) from its ``VideoFlash`` videos and ``AudioWAV`` files."""

from __future__ import annotations

from pathlib import Path

from data_modules.split_lists import AudioVisualSplitListDataModule
from data_modules.splits import CREMAD_CLASSES, SplitEntry, read_cremad_classes, read_cremad_split


class CremadDataModule(AudioVisualSplitListDataModule):
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
        **kwargs,
    ) -> None:
        self.classes = read_cremad_classes(classes_file) if classes_file else list(CREMAD_CLASSES)
        super().__init__(root=root, num_classes=len(self.classes), **kwargs)
        self.save_hyperparameters()
        self.lists = {"train": train_list, "test": test_list}
        self.video_dir = video_dir
        self.audio_dir = audio_dir

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {split: read_cremad_split(path, self.classes) for split, path in self.lists.items()}

    def media_folders(self) -> tuple[Path, Path | None]:
        return self.root / self.video_dir, self.root / self.audio_dir
