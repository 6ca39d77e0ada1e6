"""The RGB + optical-flow clip pipeline (UCF101): frames and flow images of one video."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from data_modules.augment import CROP_SUFFIX, draw_crops
from data_modules.cache import ClipArray, take_steps
from data_modules.decoding import decode_sampled, probe_media, sample_frame_indices
from data_modules.features import channels_first
from data_modules.flow import FLOW_BOUND, FLOW_MEAN, FLOW_STD, flow_images
from data_modules.manifest import ClipRecord

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RgbFlowSettings:
    """How a video becomes ``rgb`` (3, num_frames, S, S) and ``flow`` (2, num_frames, S, S) float32
    inputs (a :class:`~data_modules.clips.ClipPipeline`; S = ``frame_size``).

    Extraction keeps the frames at ``fps`` (every frame when ``None``) as RGB uint8 S x S and,
    for each, the quantised dense flow to the next decoded frame (see :mod:`data_modules.flow`),
    resized to S x S. The transform picks ``num_frames`` time steps (random per segment for
    training, centred for evaluation; the same steps for both modalities), optionally crops and
    flips each image for training (``augment``; a flip mirrors the flow's u component), scales
    to [0, 1] and normalises: ImageNet statistics for RGB, 0.1307 / 0.3081 for flow. The defaults
    are the paper's inputs (1 fps, 3 steps, 224 x 224, augmented for training).
    """

    fps: float | None = 1.0
    num_frames: int = 3
    frame_size: int = 224
    rgb_mean: tuple[float, float, float] = IMAGENET_MEAN
    rgb_std: tuple[float, float, float] = IMAGENET_STD
    flow_mean: tuple[float, float] = FLOW_MEAN
    flow_std: tuple[float, float] = FLOW_STD
    flow_bound: float = FLOW_BOUND
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_size", "flow_bound"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0 (or None for every frame), got {self.fps}")
        for name, channels in (("rgb_mean", 3), ("rgb_std", 3), ("flow_mean", 2), ("flow_std", 2)):
            if len(getattr(self, name)) != channels:
                raise ValueError(f"{name} needs {channels} values, got {getattr(self, name)}")
        if min(self.rgb_std) <= 0 or min(self.flow_std) <= 0:
            raise ValueError(f"rgb_std and flow_std must be > 0, got {self.rgb_std} and {self.flow_std}")

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        size, frames = self.frame_size, self.num_frames
        return {"rgb": [3, frames, size, size], "flow": [2, frames, size, size]}

    @property
    def pixel_normalization(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return {
            "rgb": (tuple(self.rgb_mean), tuple(self.rgb_std)),
            "flow": (tuple(self.flow_mean), tuple(self.flow_std)),
        }

    def cache_fields(self) -> dict[str, object]:
        return {  # typed, so that fps: 1 in a YAML file and fps=1.0 name the same cache
            "kind": "rgb-flow",
            "fps": None if self.fps is None else float(self.fps),
            "frame_size": int(self.frame_size),
            "flow_bound": float(self.flow_bound),
        }

    @property
    def stepwise_arrays(self) -> tuple[str, ...]:
        return ("frames", "flow")

    def probe(self, record: ClipRecord) -> str | None:
        """Why ``record`` is unusable (missing file, no video stream, ...), or ``None``."""
        return record.problem if record.problem is not None else probe_media(record.path, ("video",))

    def extract(self, record: ClipRecord) -> dict[str, np.ndarray]:
        """``frames`` uint8 (N, S, S, 3) at ``fps`` and ``flow`` uint8 (N, S, S, 2). Raises ClipDecodeError."""
        _, video = decode_sampled(record.path, fps=self.fps, frame_size=self.frame_size, pairs=True)
        return {"frames": video.frames, "flow": flow_images(video.pairs, self.frame_size, self.flow_bound)}

    def transform(
        self, arrays: Mapping[str, ClipArray], *, train: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``rgb`` (3, T, S, S) and ``flow`` (2, T, S, S) uint8 from :meth:`extract`'s arrays, normalised on the
        device by the data module (:meth:`MediaDataModule.normalize`); training draws the frames and, with
        ``augment``, each frame's crop and flip (``rgb_crop``, ``flow_crop``) from ``generator``."""
        steps = sample_frame_indices(len(arrays["frames"]), self.num_frames, train=train, generator=generator)
        rgb, motion = take_steps(arrays["frames"], steps), take_steps(arrays["flow"], steps)
        inputs = {"rgb": channels_first(rgb), "flow": channels_first(motion)}
        if train and self.augment:
            size = rgb.shape[1:3]
            inputs["rgb" + CROP_SUFFIX] = draw_crops(len(rgb), *size, generator=generator)
            inputs["flow" + CROP_SUFFIX] = draw_crops(len(motion), *size, flip_negates=0, generator=generator)
        return inputs
