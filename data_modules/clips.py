"""Clip pipelines (decode -> cacheable arrays -> model inputs), the clip dataset, and the data modules built on them."""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal, Protocol, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from data_modules.augment import CROP_SUFFIX, crop_resize_flip, draw_crops
from data_modules.cache import CacheReadError, ClipArray, ClipCache, take_steps
from data_modules.decoding import ClipDecodeError, decode_audio, decode_sampled, probe_media, sample_frame_indices
from data_modules.features import channels_first, kaldi_fbank, normalize_fbank, normalize_pixels
from data_modules.manifest import PREDICT_SPLIT, ClipRecord, read_manifest
from data_modules.prepare_clips import PrepareReport, prepare_clips

BadClipPolicy = Literal["raise", "skip"]
Sample = dict[str, torch.Tensor]

_STAGE_SPLITS: Final[dict[str | None, tuple[str, ...]]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),  # or the "predict" split when the records have one (setup)
    None: ("train", "val", "test"),
}
_LISTED_BAD_CLIPS: Final = 5


class ClipPipeline(Protocol):
    """How clips become model inputs, in two stages so that the first can be cached.

    ``extract`` decodes a clip into compact arrays (cacheable, independent of training or
    evaluation); ``transform`` turns them into the model's inputs, one per key of ``input_shapes``,
    sampling frames at random (from ``generator``) for training and centred for evaluation: float32,
    except the pixel modalities (the keys of ``pixel_normalization``), which stay uint8 (C, T, H, W)
    until the data module normalises the batch on the device.
    ``cache_fields`` are the settings that shape the extracted arrays; ``stepwise_arrays`` name those
    whose leading axis is time, of which a sample uses a few steps: the cache stores them per step and
    ``transform`` reads the steps it takes with :func:`take_steps`.
    """

    @property
    def input_shapes(self) -> dict[str, list[int]]: ...

    @property
    def pixel_normalization(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]: ...

    def cache_fields(self) -> dict[str, object]: ...

    @property
    def stepwise_arrays(self) -> tuple[str, ...]: ...

    def probe(self, record: ClipRecord) -> str | None: ...

    def extract(self, record: ClipRecord) -> dict[str, np.ndarray]: ...

    def transform(
        self, arrays: Mapping[str, ClipArray], *, train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class ClipSettings:
    """How an audio-visual clip becomes ``audio`` (1, num_mel_bins, audio_frames) and ``visual``
    (3, num_frames, frame_size, frame_size) float32 inputs (a :class:`ClipPipeline`).

    Extraction keeps the video frames at ``fps`` (every decoded frame when ``None``), resized
    to ``frame_size`` x ``frame_size`` RGB uint8, and the raw Kaldi filterbank of the audio
    resampled to mono ``sample_rate`` Hz (at most ``audio_frames`` frames). The transform picks
    ``num_frames`` of the kept frames (one per segment: random for training, centred for
    evaluation; see :func:`sample_frame_indices`), optionally crops and flips them for training
    (``augment``, see :func:`draw_crops`), and normalises the filterbank as
    ``(x - audio_mean) / (audio_std_factor * audio_std)``.

    The defaults are the paper's inputs, the one set of defaults of every audio-visual data module:
    frames at 1 fps, 3 per clip (random per segment, cropped and flipped for training; centred for
    evaluation), 224 x 224, ImageNet normalisation; a 128-bin Kaldi fbank (10 ms shift) padded / cut
    to 1024 frames, normalised with the AudioSet mean -4.503877 and twice its std 5.141276, as the
    official CRMT / OGM-GE / AST code divides by *twice* the std (``audio_std_factor=2``; attacks
    and certified radii are measured on normalised inputs). In a configuration it is the data
    module's nested ``clip`` argument (``data.init_args.clip.fps: 1.0``).
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    audio_frames: int = 1024
    audio_mean: float = -4.503877
    audio_std: float = 5.141276
    audio_std_factor: float = 2.0
    fps: float | None = 1.0
    num_frames: int = 3
    frame_size: int = 224
    visual_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    visual_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_mel_bins", "audio_frames", "num_frames", "frame_size", "audio_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.audio_std_factor <= 0:
            raise ValueError(f"audio_std_factor must be > 0, got {self.audio_std_factor}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0 (or None for every frame), got {self.fps}")
        for name in ("visual_mean", "visual_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs one value per RGB channel, got {getattr(self, name)}")
        if min(self.visual_std) <= 0:
            raise ValueError(f"visual_std values must be > 0, got {self.visual_std}")

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        return {
            "visual": [3, self.num_frames, self.frame_size, self.frame_size],
            "audio": [1, self.num_mel_bins, self.audio_frames],
        }

    @property
    def pixel_normalization(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return {"visual": (tuple(self.visual_mean), tuple(self.visual_std))}

    def cache_fields(self) -> dict[str, object]:
        return {  # typed, so that fps: 1 in a YAML file and fps=1.0 name the same cache
            "kind": "audio-visual",
            "sample_rate": int(self.sample_rate),
            "num_mel_bins": int(self.num_mel_bins),
            "audio_frames": int(self.audio_frames),
            "fps": None if self.fps is None else float(self.fps),
            "frame_size": int(self.frame_size),
        }

    @property
    def stepwise_arrays(self) -> tuple[str, ...]:
        return ("frames",)

    def probe(self, record: ClipRecord) -> str | None:
        """Why ``record`` is unusable (missing file, no video / audio stream, ...), or ``None``."""
        if record.problem is not None:
            return record.problem
        if record.audio_path is None:
            return probe_media(record.path, ("video", "audio"))
        problem = probe_media(record.path, ("video",))
        audio_problem = probe_media(record.audio_path, ("audio",))
        return problem or (f"audio file {record.audio_path}: {audio_problem}" if audio_problem else None)

    def extract(self, record: ClipRecord) -> dict[str, np.ndarray]:
        """Decode ``record`` once: ``frames`` uint8 (N, S, S, 3) at ``fps`` and ``fbank`` float32
        (n <= audio_frames, num_mel_bins), the raw filterbank. Raises :class:`ClipDecodeError`."""
        own_audio = record.audio_path is None
        waveform, video = decode_sampled(
            record.path, fps=self.fps, frame_size=self.frame_size, sample_rate=self.sample_rate if own_audio else None
        )
        if not own_audio:
            waveform = decode_audio(record.audio_path, self.sample_rate)
        audio_file = record.path if own_audio else record.audio_path
        try:
            fbank = kaldi_fbank(
                waveform, sample_rate=self.sample_rate, num_mel_bins=self.num_mel_bins, max_frames=self.audio_frames
            )
        except ValueError as error:
            raise ClipDecodeError.for_clip(audio_file, str(error)) from error
        return {"frames": video.frames, "fbank": fbank.numpy()}

    def transform(
        self, arrays: Mapping[str, ClipArray], *, train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``visual`` uint8 (3, num_frames, S, S) and ``audio`` float32 (1, num_mel_bins, audio_frames)
        from :meth:`extract`'s arrays; training draws frames from ``generator``, and with ``augment``
        each frame's crop and flip (``visual_crop``, see :func:`draw_crops`), which the data module
        applies on the device with the normalisation (:meth:`MediaDataModule.normalize`)."""
        frames = arrays["frames"]
        chosen = take_steps(frames, sample_frame_indices(len(frames), self.num_frames, train=train, generator=generator))
        inputs = {"visual": channels_first(chosen)}
        if train and self.augment:
            inputs["visual" + CROP_SUFFIX] = draw_crops(len(chosen), *chosen.shape[1:3], generator=generator)
        inputs["audio"] = normalize_fbank(
            torch.from_numpy(arrays["fbank"]),
            target_frames=self.audio_frames,
            mean=self.audio_mean,
            std=self.audio_std * self.audio_std_factor,
        )
        return inputs


class SkipLog:
    """The clips a :class:`ClipDataset` dropped while loading (``on_bad_clip="skip"``), from any
    DataLoader worker: one JSON line ``[path, reason]`` per drop, appended to a file that this
    object (in the main process) reads and removes when it is garbage-collected. Workers' copies
    append to the same file; they exit without running finalizers, so they remove nothing."""

    def __init__(self) -> None:
        self.path = Path(tempfile.gettempdir()) / f"crmt-skipped-{uuid.uuid4().hex}.jsonl"
        weakref.finalize(self, self.path.unlink, missing_ok=True)

    def add(self, path: str, reason: str) -> None:
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(json.dumps([path, reason]) + "\n")

    def entries(self) -> list[tuple[str, str]]:
        """Every (path, reason) logged so far, once each, in the order first logged."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return list(dict.fromkeys(tuple(json.loads(line)) for line in lines if line))


class ClipDataset(Dataset[Sample | None]):
    """The clips of one split as samples with one float32 input per modality of the pipeline
    (e.g. ``audio`` (1, F, T_a) and ``visual`` (3, T, H, W)), plus int64 scalars ``label`` and
    ``index`` (the position in this dataset).

    A clip is read from ``cache`` when it is cached there, else decoded on the fly; both give
    the same arrays, so the same tensors for evaluation. Containers are opened per item, so
    the dataset pickles cheaply into DataLoader workers.

    Items are addressed by ``index`` or, for training, by ``(epoch, index)`` (what
    :class:`EpochShuffle` yields; a bare index means epoch 0). Training samples one random frame
    per segment (and crops, with ``augment``) from a generator seeded by ``(seed, epoch, index)``
    (:func:`sample_seed`): every draw is a function of the run's seed, the epoch and the clip,
    whatever the worker count, the rank or the point a run was resumed from.

    A clip that fails to decode raises :class:`ClipDecodeError` (``on_bad_clip="raise"``) or is
    returned as ``None`` with a warning and recorded in ``skip_log`` (``"skip"``);
    :func:`collate_clips` drops those.

    :attr:`media` switches the inputs off: a sample is then only its ``label`` and ``index`` and
    nothing is read or decoded (CRMT's step 2 reads its cached scores by index; it switches through
    :meth:`MediaDataModule.set_training_media`). The switch lives in shared memory, so DataLoader
    workers see it from their next item.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        settings: ClipPipeline,
        *,
        train: bool,
        on_bad_clip: BadClipPolicy = "raise",
        cache: ClipCache | None = None,
        seed: int = 0,
        skip_log: SkipLog | None = None,
    ) -> None:
        self.records = list(records)
        self.settings = settings
        self.train = train
        self.on_bad_clip = on_bad_clip
        self.cache = cache
        self.seed = seed
        self.skip_log = skip_log
        self._media = torch.ones((), dtype=torch.bool).share_memory_()

    @property
    def media(self) -> bool:
        """Whether samples carry their inputs (True) or only ``label`` and ``index`` (False)."""
        return bool(self._media)

    @media.setter
    def media(self, enabled: bool) -> None:
        self._media.fill_(enabled)

    def __len__(self) -> int:
        return len(self.records)

    def inputs(self, index: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The inputs of clip ``index`` (:meth:`ClipPipeline.transform` of its extracted arrays): read from
        the cache when cached there (only the steps the sample uses), else decoded now; also, with a
        warning naming the file, when the cache file cannot be read or fails a CRC check (the same
        inputs: the generator restarts from its state on entry)."""
        record = self.records[index]
        state = generator.get_state() if generator is not None else None
        if self.cache is not None:
            try:
                with self.cache.open(record.key) as arrays:
                    return self.settings.transform(arrays, train=self.train, generator=generator)
            except FileNotFoundError:
                pass
            except CacheReadError as error:
                warnings.warn(f"{error}; decoding the clip from its media instead", stacklevel=2)
                if generator is not None:
                    generator.set_state(state)
        return self.settings.transform(self.settings.extract(record), train=self.train, generator=generator)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        identity = {"label": torch.tensor(record.label, dtype=torch.int64), "index": torch.tensor(index, dtype=torch.int64)}
        if not self.media:
            return identity
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index)) if self.train else None
        try:
            inputs = self.inputs(index, generator)
        except ClipDecodeError as error:
            if self.on_bad_clip == "raise":
                raise
            warnings.warn(f"skipping sample {index}: {error}", stacklevel=2)
            if self.skip_log is not None:
                self.skip_log.add(str(record.path), error.reason or str(error))
            return None
        return {**inputs, **identity}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for the random draws of sample ``index`` in ``epoch`` of a run seeded ``seed``
    (numpy's SeedSequence hash, so nearby triples give unrelated streams)."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1, np.uint64)[0])


class EpochShuffle(DistributedSampler):
    """The training order: this rank's shard of a permutation seeded by ``seed + epoch``, as
    ``(epoch, index)`` keys of a :class:`ClipDataset`, so that the samples' random draws follow
    the epoch too.

    A :class:`DistributedSampler` even in one process, so Lightning keeps it under DDP and calls
    :meth:`set_epoch` before every epoch. The epoch is read when an iterator is made, so epoch
    ``e`` is the same in a fresh run and in a run resumed at ``e``.
    """

    def __init__(self, dataset: ClipDataset, *, num_replicas: int, rank: int, seed: int, epoch: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


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


class MediaDataModule(L.LightningDataModule):
    """Shared machinery of the clip data modules: splits of :class:`ClipRecord` -> probed
    :class:`ClipDataset` s -> DataLoaders, and the optional preprocessing cache.

    Subclasses set ``num_classes`` and ``settings`` (a :class:`ClipPipeline`) in ``__init__``
    and implement :meth:`read_records`. Batches are dicts with one tensor per key of
    ``input_shapes`` (B, *shape), and ``label``, ``index`` (B,) int64: float32 inputs, except pixel
    modalities, which leave the DataLoader as uint8 and become normalised float32 once on the
    device (:meth:`on_after_batch_transfer`, :meth:`normalize`). ``setup`` checks every
    clip of the requested splits before training starts; unusable ones raise one
    :class:`ClipDecodeError` listing them (``on_bad_clip="raise"``) or are dropped, counted in a
    warning and kept in ``skipped_clips`` as ``(path, reason)`` (``"skip"``), like the clips that
    fail later, while a batch is loaded. An empty test split, or an empty validation split while
    validation is on, is an error naming the split.

    The model-facing declarations: ``num_classes``, :attr:`input_shapes` and :attr:`pixel_normalization`
    (which the CLI links into the model), and :meth:`set_training_media` (CRMT's step 2 turns the
    training samples' inputs off with it).

    ``persistent_workers`` keeps the DataLoader workers alive between epochs (off by default; on a
    16-core GPU machine it read the cache 2.2x faster, see docs/scaling.md).

    With ``cache_dir``, clips cached by ``prepare_cache`` (``python -m data_modules.prepare``)
    are read from the cache and not probed again; clips that preparation could not decode are
    unusable with the recorded reason; the rest is probed and decoded on the fly.
    """

    dataset_name: ClassVar[str] = "clips"
    """Prefix of this data module's cache folder."""

    def __init__(
        self,
        *,
        num_classes: int,
        settings: ClipPipeline,
        batch_size: int,
        num_workers: int | None,
        persistent_workers: bool,
        on_bad_clip: BadClipPolicy,
        seed: int,
        cache_dir: str | None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or batch_size < 1 or (num_workers is not None and num_workers < 0):
            raise ValueError(
                f"need num_classes >= 1, batch_size >= 1 and num_workers >= 0, "
                f"got {num_classes}, {batch_size} and {num_workers}"
            )
        if on_bad_clip not in get_args(BadClipPolicy):
            raise ValueError(f"on_bad_clip must be 'raise' or 'skip', got {on_bad_clip!r}")
        self.num_classes = num_classes
        self.settings = settings
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.on_bad_clip: BadClipPolicy = on_bad_clip
        self.seed = seed
        self.cache = (
            ClipCache.for_settings(cache_dir, self.dataset_name, settings.cache_fields()) if cache_dir else None
        )
        self.unusable_clips: list[tuple[str, str]] = []
        self.skip_log = SkipLog()
        self.datasets: dict[str, ClipDataset] = {}
        self._predict_split = "test"

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's (from the calling ``__init__``), with dataclass arguments such as ``clip`` kept as
        plain dicts in :attr:`hparams`, so that checkpoints still load with ``weights_only=True``."""
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)
        for name, value in self.hparams.items():
            if is_dataclass(value):
                self.hparams[name] = asdict(value)

    @property
    def skipped_clips(self) -> list[tuple[str, str]]:
        """Every clip dropped so far with ``on_bad_clip="skip"``, as (path, reason): those found unusable
        by ``setup`` and those that failed while loading (in this process's loaders)."""
        return list(dict.fromkeys([*self.unusable_clips, *self.skip_log.entries()]))

    @property
    def source(self) -> str:
        """What the clips come from, for messages (a file or folder)."""
        return self.dataset_name

    def read_records(self) -> list[ClipRecord]:
        """Every clip of every split (``train``, ``val``, ``test``) with its label."""
        raise NotImplementedError

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        """Shape of one sample's input per modality (no batch dimension), in modality order."""
        return self.settings.input_shapes

    @property
    def pixel_normalization(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        """(mean, std) per channel of the modalities whose raw values are pixels in [0, 1] (``{}`` when none).

        Linked into the model by the CLI (:class:`crmt.models.protocol.PixelData`): attacks use it to keep
        perturbed frames valid images; audio has no such range.
        """
        return self.settings.pixel_normalization

    def normalize(self, batch: Sample | None) -> Sample | None:
        """``batch`` with its uint8 pixel modalities (the keys of :attr:`pixel_normalization`,
        (B, C, T, H, W)) cropped, resized and flipped by their training draws (``<name>_crop``, see
        :func:`crop_resize_flip`; the draws leave the batch) and normalised to float32, where they
        are; other entries as they are."""
        if batch is None:
            return None
        out = dict(batch)
        for name, (mean, std) in self.pixel_normalization.items():
            crops = out.pop(name + CROP_SUFFIX, None)
            if name in out and out[name].dtype == torch.uint8:
                pixels = out[name] if crops is None else crop_resize_flip(out[name], crops)
                out[name] = normalize_pixels(pixels, mean, std)
        return out

    def on_after_batch_transfer(self, batch: Sample | None, dataloader_idx: int) -> Sample | None:
        """Every batch the Trainer (or a strategy's ``batch_to_device``) moves to the device: :meth:`normalize`."""
        return self.normalize(batch)

    def set_training_media(self, enabled: bool) -> None:
        """Whether the training split's samples carry their inputs (``True``, the default) or only ``label`` and
        ``index``, nothing read or decoded (``False``; :attr:`ClipDataset.media`): the data module's side of
        :class:`crmt.models.protocol.MediaSwitchable`, which CRMT's step 2 uses. DataLoader workers, persistent
        ones included, see the switch from their next item."""
        if "train" not in self.datasets:
            raise RuntimeError("the 'train' split is not set up; call setup('fit') first")
        self.datasets["train"].media = enabled

    def setup(self, stage: str | None = None) -> None:
        """Read the splits and build (once) the datasets of the splits ``stage`` needs."""
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(map(str, _STAGE_SPLITS))}")
        records = self.read_records() if stage == "predict" else None
        if records is not None:
            self._predict_split = PREDICT_SPLIT if any(r.split == PREDICT_SPLIT for r in records) else "test"
        wanted = (self._predict_split,) if stage == "predict" else _STAGE_SPLITS[stage]
        splits = [split for split in wanted if split not in self.datasets]
        if not splits:
            return
        records = self.read_records() if records is None else records
        if self.cache is not None and not self.cache.exists():
            rank_zero_info(f"no preprocessing cache at {self.cache.folder}; decoding clips on the fly")
        for split in splits:
            self.datasets[split] = self._build_dataset(split, [r for r in records if r.split == split])

    def _build_dataset(self, split: str, records: list[ClipRecord]) -> ClipDataset:
        """Check ``records`` (cache first, then a probe) and apply ``on_bad_clip`` to the unusable ones."""
        cached_failures = self.cache.failures() if self.cache is not None else {}
        good: list[ClipRecord] = []
        bad: list[tuple[str, str]] = []
        for record in records:
            if self.cache is not None and self.cache.has(record.key):
                good.append(record)
                continue
            reason = cached_failures.get(record.key) or self.settings.probe(record)
            if reason is None:
                good.append(record)
            else:
                bad.append((str(record.path), reason))
        if bad:
            listed = "; ".join(f"{path} ({reason})" for path, reason in bad[:_LISTED_BAD_CLIPS])
            more = f"; and {len(bad) - _LISTED_BAD_CLIPS} more" if len(bad) > _LISTED_BAD_CLIPS else ""
            summary = f"{len(bad)} of {len(records)} clips in the {split!r} split of {self.source} are unusable"
            if self.on_bad_clip == "raise":
                raise ClipDecodeError(f"{summary} (set on_bad_clip='skip' to drop them): {listed}{more}")
            self.unusable_clips.extend(bad)
            rank_zero_warn(f"{summary}; skipping them: {listed}{more}")
        return ClipDataset(
            good,
            self.settings,
            train=split == "train",
            on_bad_clip=self.on_bad_clip,
            cache=self.cache,
            seed=self.seed,
            skip_log=self.skip_log,
        )

    def prepare_cache(self, *, workers: int = 2, compress: bool = False, progress: bool = True) -> PrepareReport:
        """Decode every clip of every split into the cache (resumable; see :func:`prepare_clips`)."""
        if self.cache is None:
            raise ValueError(f"{type(self).__name__} has no cache_dir; set one to prepare a cache")
        return prepare_clips(
            self.read_records(), self.settings, self.cache, workers=workers, compress=compress, progress=progress
        )

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split!r} split is not set up; call setup() first")
        dataset = self.datasets[split]
        if len(dataset) == 0 and (split != "val" or self.trainer is None or self.trainer.limit_val_batches != 0):
            advice = {
                "train": "",
                "val": "; validation needs some (trainer.limit_val_batches=0 trains without validation)",
            }.get(split, "; there is nothing to test (--test_after_fit false skips the test after fit)")
            raise ValueError(f"the {split!r} split of {self.source} has no usable clips{advice}")
        workers = self.loader_workers()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._training_order(dataset) if shuffle else None,
            num_workers=workers,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate_clips,
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed),
        )

    def loader_workers(self) -> int:
        """``num_workers``, or when it is ``None`` the CPU cores this process may use shared among the
        training processes of its node (one per device), at least 1."""
        if self.num_workers is not None:
            return self.num_workers
        processes = self.trainer.num_devices if self.trainer is not None else 1
        return max(1, len(os.sched_getaffinity(0)) // processes)

    def _training_order(self, dataset: ClipDataset) -> EpochShuffle:
        """This rank's shuffled shard, from the epoch the Trainer is about to run (not 0 when resuming)."""
        trainer = self.trainer
        if trainer is None:
            return EpochShuffle(dataset, num_replicas=1, rank=0, seed=self.seed, epoch=0)
        epoch = trainer.fit_loop.epoch_progress.current.processed
        return EpochShuffle(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, seed=self.seed, epoch=epoch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._predict_split, shuffle=False)

    def predict_split(self) -> str:
        """What ``predict`` reads: the ``predict`` split when the records have one (clips to predict, labels
        optional), else the test split (:class:`crmt.callbacks.predictions.ClipNames`)."""
        return self._predict_split

    def clip_name(self, split: str, index: int) -> str:
        """The media file of sample ``index`` of ``split``."""
        return str(self.datasets[split].records[index].path)


class ClipDataModule(MediaDataModule):
    """Audio-visual classification clips listed in a ``path,label,split`` CSV manifest.

    Batches are dicts with ``audio`` (B, 1, num_mel_bins, audio_frames) float32, ``visual``
    (B, 3, num_frames, frame_size, frame_size) uint8 (normalised float32 once on the device, see
    :meth:`MediaDataModule.normalize`), and ``label``, ``index`` (B,) int64;
    ``input_shapes`` and ``pixel_normalization`` describe them to the model and the attacks.
    ``clip`` (a :class:`ClipSettings`, the paper's inputs by default) says how clips become inputs;
    see :class:`MediaDataModule` for bad clips and the cache. ``seed`` seeds the training order and
    the training samples' frame draws, with the epoch (see :class:`EpochShuffle` and :class:`ClipDataset`).
    """

    def __init__(
        self,
        manifest: str,
        num_classes: int,
        clip: ClipSettings = ClipSettings(),
        batch_size: int = 16,
        num_workers: int | None = None,
        persistent_workers: bool = False,
        on_bad_clip: BadClipPolicy = "raise",
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            settings=clip,
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=persistent_workers,
            on_bad_clip=on_bad_clip,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.save_hyperparameters()
        self.manifest = manifest

    @property
    def source(self) -> str:
        return str(self.manifest)

    def read_records(self) -> list[ClipRecord]:
        return read_manifest(self.manifest, num_classes=self.num_classes)
