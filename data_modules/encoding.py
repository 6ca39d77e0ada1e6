"""Write MP4 clips (H.264 or MPEG-4 Part 2 video, AAC audio) with PyAV."""

from __future__ import annotations

import os
from functools import cache

import av
import numpy as np


@cache
def video_codec() -> str:
    """``libx264`` when PyAV's bundled FFmpeg can encode H.264, else ``mpeg4``."""
    try:
        av.Codec("libx264", "w")
    except av.FFmpegError:
        return "mpeg4"
    return "libx264"


def write_mp4(
    path: str | os.PathLike[str],
    *,
    video: np.ndarray | None,
    audio: np.ndarray | None,
    fps: int = 12,
    audio_rate: int = 22050,
    faststart: bool = False,
) -> None:
    """Encode an MP4 file with the given streams; either may be ``None`` to leave it out.

    ``video`` is uint8 RGB ``(T, H, W, 3)`` with even H and W, played at ``fps``; ``audio`` is
    float32 ``(channels, n)`` in [-1, 1] with 1 or 2 channels at ``audio_rate`` Hz. Encoding
    is single-threaded and deterministic: the same inputs give the same bytes.
    ``faststart`` puts the index (moov atom) before the media data, as streamed files do.
    """
    if video is None and audio is None:
        raise ValueError(f"{os.fspath(path)}: need a video or an audio stream to write")
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(os.fspath(path), "w", format="mp4", options=options) as container:
        # Every stream must exist before the first packet is muxed (that writes the header).
        pending = []
        if video is not None:
            pending.append((_add_video_stream(container, video, fps), _video_frames(video)))
        if audio is not None:
            pending.append((_add_audio_stream(container, audio, audio_rate), [_audio_frame(audio, audio_rate)]))
        for stream, frames in pending:
            for frame in frames:
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


def _add_video_stream(container: av.container.OutputContainer, video: np.ndarray, fps: int) -> av.VideoStream:
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
    stream = container.add_stream(video_codec(), rate=fps)
    stream.height, stream.width = video.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.thread_count = 1
    stream.options = {"preset": "ultrafast", "crf": "18"} if video_codec() == "libx264" else {"qscale": "2"}
    return stream


def _video_frames(video: np.ndarray) -> list[av.VideoFrame]:
    frames = []
    for index, image in enumerate(video):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = index
        frames.append(frame)
    return frames


def _add_audio_stream(container: av.container.OutputContainer, audio: np.ndarray, rate: int) -> av.AudioStream:
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be (channels, n) with 1 or 2 channels, got {audio.shape}")
    stream = container.add_stream("aac", rate=rate)
    stream.layout = "mono" if audio.shape[0] == 1 else "stereo"
    stream.options = {"aac_coder": "fast"}
    return stream


def _audio_frame(audio: np.ndarray, rate: int) -> av.AudioFrame:
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout=layout)
    frame.sample_rate = rate
    frame.pts = 0
    return frame
