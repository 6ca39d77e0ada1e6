"""Model inputs from decoded media: normalised log-mel filterbanks, and frames as uint8 pixels that are
normalised where the batch arrives (the device)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

WINDOW_SECONDS = 0.025
"""Length of one Kaldi fbank analysis window (25 ms)."""
SHIFT_SECONDS = 0.010
"""Hop between two Kaldi fbank frames (10 ms)."""


def kaldi_fbank(
    waveform: torch.Tensor, *, sample_rate: int = 16000, num_mel_bins: int = 128, max_frames: int | None = None
) -> torch.Tensor:
    """Raw Kaldi-style log-mel filterbank of a mono waveform ``(n,)``, as ``(frames, num_mel_bins)`` float32.

    Frames are 25 ms Hann windows every 10 ms (htk_compat, no energy, no dither), the recipe of
    the CRMT / OGM-GE / AST preprocessing. Kaldi removes each frame's DC offset, so the official
    code's global mean subtraction before the filterbank changes nothing. With ``max_frames``,
    frames past it are dropped (nothing is padded here; see :func:`normalize_fbank`).
    """
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (n,), got {tuple(waveform.shape)}")
    window = int(sample_rate * WINDOW_SECONDS)
    if waveform.numel() < window:
        raise ValueError(
            f"waveform has {waveform.numel()} samples; the filterbank needs at least {window} "
            f"(one {WINDOW_SECONDS * 1000:.0f} ms window at {sample_rate} Hz)"
        )
    if max_frames is not None:  # only the samples of the kept frames matter
        waveform = waveform[: window + (max_frames - 1) * int(sample_rate * SHIFT_SECONDS)]
    fbank = kaldi.fbank(
        waveform[None].float(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=SHIFT_SECONDS * 1000,
    )
    return fbank[:max_frames].contiguous()


def normalize_fbank(fbank: torch.Tensor, *, target_frames: int, mean: float, std: float) -> torch.Tensor:
    """A raw filterbank ``(frames, F)`` as the model input ``(1, F, target_frames)``.

    The time axis is zero-padded at the end or trimmed to ``target_frames`` (padding happens
    before normalising, as in the official code), then ``(x - mean) / std``.
    """
    if std <= 0:
        raise ValueError(f"audio_std must be > 0, got {std}")
    if fbank.ndim != 2:
        raise ValueError(f"expected a filterbank of shape (frames, mel bins), got {tuple(fbank.shape)}")
    fbank = fbank[:target_frames]
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - fbank.shape[0]))
    return ((fbank - mean) / std).T[None].contiguous()


def log_mel_fbank(
    waveform: torch.Tensor,
    *,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    target_frames: int = 1024,
    mean: float = -4.503877,
    std: float = 5.141276,
) -> torch.Tensor:
    """Kaldi-style log-mel filterbank of a mono waveform ``(n,)``, as ``(1, num_mel_bins, target_frames)``.

    :func:`kaldi_fbank` followed by :func:`normalize_fbank`: 25 ms Hann windows every 10 ms,
    zero-padded or trimmed to ``target_frames``, normalised as ``(x - mean) / std`` (AudioSet
    statistics by default).
    """
    if std <= 0:
        raise ValueError(f"audio_std must be > 0, got {std}")
    fbank = kaldi_fbank(waveform, sample_rate=sample_rate, num_mel_bins=num_mel_bins, max_frames=target_frames)
    return normalize_fbank(fbank, target_frames=target_frames, mean=mean, std=std)


def channels_first(frames: torch.Tensor) -> torch.Tensor:
    """Uint8 frames ``(T, H, W, C)`` as contiguous uint8 ``(C, T, H, W)``: the form in which pixel
    modalities leave the DataLoader (a quarter of float32's bytes), to be normalised on the device."""
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames.numpy().transpose(3, 0, 1, 2)))  # 2x torch's uint8 permute


def normalize_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channels-first pixel values in [0, 255] (uint8, or float32 from a resize) of one clip
    ``(C, T, H, W)`` or a batch ``(B, C, T, H, W)`` to float32 on their device: scaled to [0, 1],
    then ``(x - mean_c) / std_c`` per channel."""
    if pixels.ndim not in (4, 5) or pixels.dtype not in (torch.uint8, torch.float32):
        raise ValueError(
            f"expected uint8 or float32 pixels (C, T, H, W) or (B, C, T, H, W), got {pixels.dtype} {tuple(pixels.shape)}"
        )
    channels = pixels.shape[pixels.ndim - 4]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"need {channels} mean and std values with std > 0, got {tuple(mean)} and {tuple(std)}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(channels, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(channels, 1, 1, 1)
    return (pixels.float().div(255.0) - mean_t) / std_t
