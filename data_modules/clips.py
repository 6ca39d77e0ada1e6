"""Audio-visual clip dataset and the generic manifest-driven LightningDataModule."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, default_collate

from data_modules.decoding import ClipDecodeError, decode_clip, probe_clip
from data_modules.features import log_mel_fbank, normalize_frames
from data_modules.manifest import ClipRecord, read_manifest

BadClipPolicy = Literal["raise", "skip"]
Sample = dict[str, torch.Tensor]

_STAGE_SPLITS: Final[dict[str | None, tuple[str, ...]]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}
_LISTED_BAD_CLIPS: Final = 5


@dataclass(frozen=True)
class ClipSettings:
    """How a clip becomes model inputs (see :func:`log_mel_fbank` and :func:`normalize_frames`)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    audio_frames: int = 1024
    audio_mean: float = -4.503877
    audio_std: float = 5.141276
    num_frames: int = 3
    frame_size: int = 224
    visual_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    visual_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_mel_bins", "audio_frames", "num_frames", "frame_size", "audio_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("visual_mean", "visual_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs one value per RGB channel, got {getattr(self, name)}")
        if min(self.visual_std) <= 0:
            raise ValueError(f"visual_std values must be > 0, got {self.visual_std}")

    def load(self, path: Path, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``path`` into ``audio`` (1, num_mel_bins, audio_frames) and ``visual``
        (3, num_frames, frame_size, frame_size), both float32.

        Training draws frame positions from torch's global RNG.
        """
        clip = decode_clip(
            path, num_frames=self.num_frames, frame_size=self.frame_size, train=train, sample_rate=self.sample_rate
        )
        try:
            audio = log_mel_fbank(
                clip.audio,
                sample_rate=self.sample_rate,
                num_mel_bins=self.num_mel_bins,
                target_frames=self.audio_frames,
                mean=self.audio_mean,
                std=self.audio_std,
            )
        except ValueError as error:
            raise ClipDecodeError.for_clip(path, str(error)) from error
        return audio, normalize_frames(clip.frames, self.visual_mean, self.visual_std)


class ClipDataset(Dataset[Sample | None]):
    """The clips of one split as ``{"audio", "visual", "label", "index"}`` samples.

    ``audio`` is (1, F, T_a) and ``visual`` (3, T, H, W), both float32; ``label`` and ``index``
    (the position in this dataset) are int64 scalars. Containers are opened per item, so the
    dataset pickles cheaply into DataLoader workers.

    Training samples one random frame per segment from torch's global RNG. In a DataLoader worker
    that RNG is seeded per epoch by the DataLoader (from its ``generator`` when given, which
    :class:`ClipDataModule` seeds from ``seed``, and re-mixed with the rank by Lightning's
    ``seed_everything(workers=True)``); with ``num_workers=0`` it is the main process's RNG, set by
    ``seed_everything``. Either way a seeded run repeats exactly and epochs differ.

    A clip that fails to decode raises :class:`ClipDecodeError` (``on_bad_clip="raise"``) or is
    returned as ``None`` with a warning (``"skip"``); :func:`collate_clips` drops those.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        settings: ClipSettings,
        *,
        train: bool,
        on_bad_clip: BadClipPolicy = "raise",
    ) -> None:
        self.records = list(records)
        self.settings = settings
        self.train = train
        self.on_bad_clip = on_bad_clip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | None:
        record = self.records[index]
        try:
            audio, visual = self.settings.load(record.path, train=self.train)
        except ClipDecodeError as error:
            if self.on_bad_clip == "raise":
                raise
            warnings.warn(f"skipping sample {index}: {error}", stacklevel=2)
            return None
        return {
            "audio": audio,
            "visual": visual,
            "label": torch.tensor(record.label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def collate_clips(samples: Sequence[Sample | None]) -> Sample | None:
    """Stack samples into a batch, dropping (and counting, in a warning) the ``None`` ones.

    The batch then has fewer samples; nothing is zero-filled. A batch whose every sample was
    dropped becomes ``None``: Lightning's training loop skips it with a warning, while
    ``validation_step`` / ``test_step`` receive ``None`` and must return early.
    """
    kept = [sample for sample in samples if sample is not None]
    if len(kept) < len(samples):
        warnings.warn(
            f"dropped {len(samples) - len(kept)} of {len(samples)} samples whose clips failed to decode",
            stacklevel=2,
        )
    return default_collate(kept) if kept else None


def probe_records(records: Sequence[ClipRecord]) -> tuple[list[ClipRecord], list[tuple[str, str]]]:
    """Split ``records`` into usable clips and ``(path, reason)`` pairs for unusable ones."""
    good: list[ClipRecord] = []
    bad: list[tuple[str, str]] = []
    for record in records:
        reason = probe_clip(record.path)
        if reason is None:
            good.append(record)
        else:
            bad.append((str(record.path), reason))
    return good, bad


class ClipDataModule(L.LightningDataModule):
    """Audio-visual classification clips listed in a ``path,label,split`` CSV manifest.

    Batches are dicts with ``audio`` (B, 1, num_mel_bins, audio_frames), ``visual``
    (B, 3, num_frames, frame_size, frame_size) float32, and ``label``, ``index`` (B,) int64;
    ``input_shapes`` and ``pixel_normalization`` describe them to the model and the attacks.
    ``setup`` probes every clip of the requested splits; unusable ones raise one
    :class:`ClipDecodeError` (``on_bad_clip="raise"``) or are dropped and listed in
    ``skipped_clips`` as ``(path, reason)`` (``"skip"``). ``seed`` seeds the training
    loader's shuffling and its workers' frame sampling (see :class:`ClipDataset`).
    """

    def __init__(
        self,
        manifest: str,
        num_classes: int,
        batch_size: int = 16,
        num_workers: int = 2,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        audio_frames: int = 1024,
        audio_mean: float = -4.503877,
        audio_std: float = 5.141276,
        num_frames: int = 3,
        frame_size: int = 224,
        visual_mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        visual_std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        on_bad_clip: Literal["raise", "skip"] = "raise",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need num_classes >= 1, batch_size >= 1 and num_workers >= 0, "
                f"got {num_classes}, {batch_size} and {num_workers}"
            )
        if on_bad_clip not in get_args(BadClipPolicy):
            raise ValueError(f"on_bad_clip must be 'raise' or 'skip', got {on_bad_clip!r}")
        self.manifest = manifest
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_bad_clip: BadClipPolicy = on_bad_clip
        self.seed = seed
        self.settings = ClipSettings(
            sample_rate=sample_rate,
            num_mel_bins=num_mel_bins,
            audio_frames=audio_frames,
            audio_mean=audio_mean,
            audio_std=audio_std,
            num_frames=num_frames,
            frame_size=frame_size,
            visual_mean=tuple(visual_mean),
            visual_std=tuple(visual_std),
        )
        self.skipped_clips: list[tuple[str, str]] = []
        self.datasets: dict[str, ClipDataset] = {}

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        """Shape of one sample's input per modality (no batch dimension), in modality order."""
        settings = self.settings
        return {
            "visual": [3, settings.num_frames, settings.frame_size, settings.frame_size],
            "audio": [1, settings.num_mel_bins, settings.audio_frames],
        }

    @property
    def pixel_normalization(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        """(mean, std) per channel of the modalities whose raw values are pixels in [0, 1].

        Attacks use it to keep perturbed frames valid images; audio has no such range.
        """
        return {"visual": (self.settings.visual_mean, self.settings.visual_std)}

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest and build (once) the datasets of the splits ``stage`` needs."""
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(map(str, _STAGE_SPLITS))}")
        splits = [split for split in _STAGE_SPLITS[stage] if split not in self.datasets]
        if not splits:
            return
        records = read_manifest(self.manifest, num_classes=self.num_classes)
        for split in splits:
            self.datasets[split] = self._build_dataset(split, [r for r in records if r.split == split])

    def _build_dataset(self, split: str, records: list[ClipRecord]) -> ClipDataset:
        """Probe ``records`` and apply ``on_bad_clip`` to the unusable ones."""
        good, bad = probe_records(records)
        if bad:
            listed = "; ".join(f"{path} ({reason})" for path, reason in bad[:_LISTED_BAD_CLIPS])
            more = f"; and {len(bad) - _LISTED_BAD_CLIPS} more" if len(bad) > _LISTED_BAD_CLIPS else ""
            summary = f"{len(bad)} of {len(records)} clips in the {split!r} split of {self.manifest} are unusable"
            if self.on_bad_clip == "raise":
                raise ClipDecodeError(f"{summary} (set on_bad_clip='skip' to drop them): {listed}{more}")
            self.skipped_clips.extend(bad)
            rank_zero_warn(f"{summary}; skipping them: {listed}{more}")
        return ClipDataset(good, self.settings, train=split == "train", on_bad_clip=self.on_bad_clip)

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split!r} split is not set up; call setup() first")
        dataset = self.datasets[split]
        if shuffle and len(dataset) == 0:
            raise ValueError(f"the {split!r} split of {self.manifest} has no usable clips")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            pin_memory=False,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
