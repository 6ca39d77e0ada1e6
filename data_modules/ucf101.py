"""UCF101 (101 classes, RGB + optical flow) from the official videos and split lists."""

from __future__ import annotations

from data_modules.clips import BadClipPolicy
from data_modules.rgb_flow import RgbFlowSettings
from data_modules.split_lists import SplitListDataModule
from data_modules.splits import SplitEntry, read_ucf101_classes, read_ucf101_split


class UCF101DataModule(SplitListDataModule):
    """UCF101 videos under ``root`` (``<Class>/v_<Class>_gXX_cYY.avi``; any layout works, files are
    found by name), split ``split`` (1-3) of the lists in ``splits_dir`` (``ucfTrainTestlist/``:
    ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``).

    Batches: ``rgb`` (B, 3, num_frames, S, S) and ``flow`` (B, 2, num_frames, S, S) float32
    (S = ``frame_size``), ``label`` and ``index`` (B,) int64. Frames are kept at ``fps`` (a
    UCF101 clip of 7 s gives 7); each has the Farneback flow to the next video frame, clipped to
    +-15 px and mapped to [0, 1] (see :mod:`data_modules.flow`). ``clip`` says how a video becomes
    inputs (:class:`~data_modules.rgb_flow.RgbFlowSettings`, the paper's by default); bad clips, the
    cache and validation work as in :class:`~data_modules.split_lists.SplitListDataModule`.
    """

    dataset_name = "ucf101"

    def __init__(
        self,
        root: str,
        splits_dir: str,
        split: int = 1,
        clip: RgbFlowSettings = RgbFlowSettings(),
        val_fraction: float = 0.0,
        cache_dir: str | None = "data/cache",
        batch_size: int = 64,
        num_workers: int | None = None,
        persistent_workers: bool = False,
        on_bad_clip: BadClipPolicy = "raise",
        seed: int = 0,
    ) -> None:
        if split not in (1, 2, 3):
            raise ValueError(f"UCF101 split must be 1, 2 or 3, got {split}")
        self.classes = read_ucf101_classes(splits_dir)
        super().__init__(
            root=root,
            num_classes=len(self.classes),
            settings=clip,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=persistent_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.save_hyperparameters()
        self.splits_dir = splits_dir
        self.split = split

    def split_entries(self) -> dict[str, list[SplitEntry]]:
        return {part: read_ucf101_split(self.splits_dir, self.split, part, self.classes) for part in ("train", "test")}
