"""Decode the audio track and a few video frames of one clip with PyAV."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import av
import numpy as np
import torch

StrPath = str | os.PathLike[str]


class ClipDecodeError(RuntimeError):
    """A clip cannot be read; the message names the file and the reason.

    The constructor takes the full message (so that a DataLoader worker can re-raise it
    unchanged); use :meth:`for_clip` to build one from a path and a reason.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_clip(cls, path: StrPath, reason: str) -> ClipDecodeError:
        """The error for one clip: ``cannot decode clip <path>: <reason>``."""
        return cls(f"cannot decode clip {os.fspath(path)}: {reason}", path=os.fspath(path), reason=reason)


class DecodedClip(NamedTuple):
    """Both streams of a clip: ``audio`` (n,) float32 mono, ``frames`` (T, H, W, 3) uint8."""

    audio: torch.Tensor
    frames: torch.Tensor


def describe_error(error: BaseException) -> str:
    """A short reason for a PyAV / OS error, without the file name PyAV appends."""
    strerror = getattr(error, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else str(error) or type(error).__name__


def probe_media(path: StrPath, streams: Sequence[str]) -> str | None:
    """Cheaply check that ``path`` opens and has every kind of stream in ``streams`` (``"video"``,
    ``"audio"``); ``None`` when it does, else the reason. Nothing is decoded."""
    try:
        with _open(path) as container:
            missing = [kind for kind in streams if not getattr(container.streams, kind)]
    except ClipDecodeError as error:
        return error.reason
    return f"no {' and no '.join(missing)} stream" if missing else None


def sample_frame_indices(
    num_decoded: int, num_frames: int, *, train: bool, generator: torch.Generator | None = None
) -> list[int]:
    """Pick one frame index per segment, splitting ``range(num_decoded)`` into ``num_frames`` segments.

    Segment ``k`` is ``[floor(k n / T), floor((k + 1) n / T))`` (at least one frame wide, so
    indices repeat when ``n < T``). Training draws a uniform frame within each segment from
    ``generator`` (torch's global RNG when ``None``); evaluation takes the segment centre.
    """
    if num_decoded < 1 or num_frames < 1:
        raise ValueError(f"need num_decoded >= 1 and num_frames >= 1, got {num_decoded} and {num_frames}")
    if not train:
        return [int((k + 0.5) * num_decoded / num_frames) for k in range(num_frames)]
    starts = torch.tensor([k * num_decoded // num_frames for k in range(num_frames)])
    ends = torch.tensor([(k + 1) * num_decoded // num_frames for k in range(num_frames)])
    widths = torch.clamp(ends - starts, min=1)
    offsets = (torch.rand(num_frames, generator=generator) * widths).long()
    return (starts + offsets).tolist()


@contextmanager
def _clip_errors(path: StrPath) -> Iterator[None]:
    """Turn PyAV / OS errors raised inside the block into a :class:`ClipDecodeError` for ``path``."""
    try:
        yield
    except (av.FFmpegError, OSError) as error:
        raise ClipDecodeError.for_clip(path, describe_error(error)) from error


def _open(path: StrPath) -> av.container.InputContainer:
    """Open ``path`` for demuxing; any failure (an empty file included) is a :class:`ClipDecodeError`."""
    with _clip_errors(path):
        if os.stat(path).st_size == 0:
            raise ClipDecodeError.for_clip(path, "empty file (0 bytes)")
        return av.open(os.fspath(path))


class FrameSampler:
    """Collects the video frames of one demuxing pass that a clip needs.

    With ``fps=None`` it keeps every frame. Otherwise it keeps, for k = 0, 1, ..., the first
    frame whose time is at least ``k / fps`` after the first frame's (ffmpeg's ``fps`` filter
    picks nearly the same frames). With ``neighbours``, it also pairs each kept frame with the
    next frame, for optical flow (the stream's last frame with the one before it, a lone frame
    with itself): ``pairs[i]`` is (earlier, later).
    """

    def __init__(self, fps: float | None = None, *, neighbours: bool = False) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        self.fps = fps
        self.neighbours = neighbours
        self.kept: list[av.VideoFrame] = []
        self.pairs: list[tuple[av.VideoFrame, av.VideoFrame]] = []
        self._previous: av.VideoFrame | None = None
        self._previous_of_last: av.VideoFrame | None = None
        self._start: float | None = None
        self._count = 0

    def offer(self, frame: av.VideoFrame) -> None:
        """Look at the next decoded frame (in presentation order) and keep it if it is needed."""
        if self.neighbours and len(self.pairs) < len(self.kept):
            self.pairs.append((self.kept[-1], frame))
        time = frame.time if frame.time is not None else float(self._count)
        self._count += 1
        if self._start is None:
            self._start = time
        if self.fps is None or time - self._start >= len(self.kept) / self.fps - 1e-6:
            self.kept.append(frame)
        if self.neighbours:
            if self.kept[-1] is frame:
                self._previous_of_last = self._previous
            self._previous = frame

    def finish(self) -> None:
        """Mark the end of the stream: pair the last kept frame if nothing followed it."""
        if self.neighbours and len(self.pairs) < len(self.kept):
            last = self.kept[-1]
            self.pairs.append((self._previous_of_last or last, last))


def _decode(
    path: StrPath, *, sample_rate: int | None, video: bool | FrameSampler
) -> tuple[list[np.ndarray], list[av.VideoFrame]]:
    """Demux once: mono float32 chunks of the first audio stream resampled to ``sample_rate``
    (skipped when ``None``) and, when ``video``, the frames of the first video stream that the
    sampler keeps (``True``: every frame)."""
    sampler = FrameSampler() if video is True else video or None
    with _clip_errors(path), _open(path) as container:
        streams = []
        if sample_rate is not None:
            if not container.streams.audio:
                raise ClipDecodeError.for_clip(path, "no audio stream")
            streams.append(container.streams.audio[0])
        if sampler is not None:
            if not container.streams.video:
                raise ClipDecodeError.for_clip(path, "no video stream")
            streams.append(container.streams.video[0])
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate) if sample_rate else None
        chunks: list[np.ndarray] = []
        for frame in container.decode(*streams):
            if isinstance(frame, av.VideoFrame):
                sampler.offer(frame)
            elif resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        if resampler is not None:
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if sampler is None:
        return chunks, []
    sampler.finish()
    return chunks, sampler.kept


def _waveform(path: StrPath, chunks: list[np.ndarray]) -> torch.Tensor:
    """Concatenate resampled chunks into ``(n,)`` float32 clamped to [-1, 1]."""
    if sum(len(chunk) for chunk in chunks) == 0:
        raise ClipDecodeError.for_clip(path, "audio stream has no samples")
    return torch.from_numpy(np.concatenate(chunks)).clamp_(-1.0, 1.0)


def _select_frames(
    path: StrPath,
    frames: list[av.VideoFrame],
    num_frames: int,
    frame_size: int,
    *,
    train: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Resize the sampled frames to RGB uint8 ``(num_frames, frame_size, frame_size, 3)``."""
    if not frames:
        raise ClipDecodeError.for_clip(path, "video stream has no decodable frames")
    indices = sample_frame_indices(len(frames), num_frames, train=train, generator=generator)
    with _clip_errors(path):
        images = [frames[i].to_ndarray(format="rgb24", width=frame_size, height=frame_size) for i in indices]
    return torch.from_numpy(np.stack(images))


def decode_audio(path: StrPath, sample_rate: int = 16000) -> torch.Tensor:
    """The first audio stream of ``path`` as mono float32 ``(n,)`` in [-1, 1] at ``sample_rate`` Hz."""
    chunks, _ = _decode(path, sample_rate=sample_rate, video=False)
    return _waveform(path, chunks)


def decode_frames(
    path: StrPath, num_frames: int, frame_size: int, *, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``num_frames`` RGB frames of the first video stream, uint8 ``(num_frames, frame_size, frame_size, 3)``.

    All frames are decoded (clips are short); one per segment is kept, see :func:`sample_frame_indices`.
    """
    _, frames = _decode(path, sample_rate=None, video=True)
    return _select_frames(path, frames, num_frames, frame_size, train=train, generator=generator)


def decode_clip(
    path: StrPath,
    *,
    num_frames: int,
    frame_size: int,
    train: bool,
    sample_rate: int = 16000,
    generator: torch.Generator | None = None,
) -> DecodedClip:
    """Both streams of ``path`` from a single demuxing pass; see :func:`decode_audio`, :func:`decode_frames`."""
    chunks, frames = _decode(path, sample_rate=sample_rate, video=True)
    audio = _waveform(path, chunks)
    return DecodedClip(audio, _select_frames(path, frames, num_frames, frame_size, train=train, generator=generator))


class SampledVideo(NamedTuple):
    """Frames of a clip at a fixed rate: ``frames`` RGB uint8 ``(N, S, S, 3)`` resized to S x S, and,
    when asked for, ``pairs``: per frame, grey native-resolution (earlier, later) neighbours
    ``(N, 2, H, W)`` uint8, see :class:`FrameSampler`."""

    frames: np.ndarray
    pairs: np.ndarray | None


def decode_sampled(
    path: StrPath,
    *,
    fps: float | None,
    frame_size: int,
    sample_rate: int | None = None,
    pairs: bool = False,
) -> tuple[torch.Tensor | None, SampledVideo]:
    """One demuxing pass over ``path``: the waveform (as :func:`decode_audio`; ``None`` when
    ``sample_rate`` is ``None``) and the frames at ``fps`` (every frame when ``None``), see
    :class:`FrameSampler` and :class:`SampledVideo`."""
    sampler = FrameSampler(fps, neighbours=pairs)
    chunks, kept = _decode(path, sample_rate=sample_rate, video=sampler)
    if not kept:
        raise ClipDecodeError.for_clip(path, "video stream has no decodable frames")
    with _clip_errors(path):
        frames = np.stack([frame.to_ndarray(format="rgb24", width=frame_size, height=frame_size) for frame in kept])
        grey = None
        if pairs:
            grey = np.stack([np.stack([frame.to_ndarray(format="gray") for frame in pair]) for pair in sampler.pairs])
    waveform = _waveform(path, chunks) if sample_rate is not None else None
    return waveform, SampledVideo(frames, grey)
