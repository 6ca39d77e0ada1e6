"""Model inputs from decoded media: normalised log-mel filterbanks and normalised frames."""

from __future__ import annotations

from collections.abc import Sequence

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


def normalize_pixels(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Uint8 frames ``(T, H, W, C)`` to float32 ``(C, T, H, W)``, scaled to [0, 1] then normalised per channel."""
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    channels = frames.shape[-1]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"need {channels} mean and std values with std > 0, got {tuple(mean)} and {tuple(std)}")
    video = frames.permute(3, 0, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(channels, 1, 1, 1)
    return (video - mean_t) / std_t


def normalize_frames(
    frames: torch.Tensor,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> torch.Tensor:
    """Uint8 RGB frames ``(T, H, W, 3)`` to float32 ``(3, T, H, W)``, scaled to [0, 1] then normalised
    per channel (ImageNet statistics by default)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"visual_mean and visual_std need 3 values each with std > 0, got {mean} and {std}")
    return normalize_pixels(frames, mean, std)
