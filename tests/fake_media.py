"""Tiny real media files for the dataset tests: MP4 / AVI / FLV videos and WAV audio written with PyAV.

Clip content depends on the class: frames show a square of the class's colour that moves
right by ``SPEED`` pixels per frame (so optical flow has a known sign), audio is a tone at the
class's pitch.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from data_modules.encoding import write_mp4

SPEED = 2
"""Pixels per frame that the square moves to the right."""


def frames(label: int, seconds: float, fps: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 RGB (T, H, W, 3): a dim noisy background and a moving square of the class colour."""
    height, width = size
    count = max(1, round(seconds * fps))
    rng = np.random.default_rng([label, seed])
    video = (rng.random((count, height, width, 3)) * 40 + 20).astype(np.uint8)
    colour = np.array([(80 * label + 100) % 256, (150 - 40 * label) % 256, 220], dtype=np.uint8)
    side = max(4, height // 3)
    top = (height - side) // 2
    for t in range(count):
        left = (2 + SPEED * t) % max(1, width - side)
        video[t, top : top + side, left : left + side] = colour
    return video


def tone(label: int, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """float32 (channels, n): a tone at a class pitch, a little quieter on the second channel."""
    n = max(1, round(seconds * rate))
    pitch = 300.0 * (1.5**label)
    wave = 0.4 * np.sin(2 * math.pi * pitch * np.arange(n) / rate).astype(np.float32)
    return np.stack([wave * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


def write_video(
    path: Path,
    video: np.ndarray | None,
    audio: np.ndarray | None = None,
    *,
    fps: int = 10,
    audio_rate: int = 16000,
) -> Path:
    """A video file whose container follows the extension: ``.mp4`` (H.264 / AAC), ``.avi``
    (MPEG-4 Part 2, PCM audio) or ``.flv`` (Sorenson H.263, AAC audio)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        write_mp4(path, video=video, audio=audio, fps=fps, audio_rate=audio_rate)
        return path
    codecs = {".avi": ("mpeg4", "pcm_s16le"), ".flv": ("flv", "aac")}[path.suffix]
    with av.open(str(path), "w", format=path.suffix[1:]) as container:
        pending = []
        if video is not None:
            stream = container.add_stream(codecs[0], rate=fps)
            stream.height, stream.width = video.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            stream.options = {"qscale": "3"}
            pending.append((stream, [_video_frame(image, index) for index, image in enumerate(video)]))
        if audio is not None:
            stream = container.add_stream(codecs[1], rate=audio_rate)
            stream.layout = "mono" if audio.shape[0] == 1 else "stereo"
            pending.append((stream, _audio_frames(audio, audio_rate, stream)))
        for stream, items in pending:
            for item in items:
                container.mux(stream.encode(item))
            container.mux(stream.encode(None))
    return path


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    """A 16-bit PCM WAV file of float32 ``audio`` (channels, n)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono" if audio.shape[0] == 1 else "stereo"
        for frame in _audio_frames(audio, rate, stream):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _video_frame(image: np.ndarray, index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    frame.pts = index
    return frame


def _audio_frames(audio: np.ndarray, rate: int, stream: av.AudioStream) -> list[av.AudioFrame]:
    """Audio split into frames of the encoder's frame size (1024 for AAC, any for PCM)."""
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    size = stream.codec_context.frame_size or 1024
    out = []
    for start in range(0, audio.shape[1], size):
        chunk = np.ascontiguousarray(audio[:, start : start + size], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        out.append(frame)
    return out
