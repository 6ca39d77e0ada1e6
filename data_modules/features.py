"""Model inputs from decoded media: normalised log-mel filterbanks and normalised frames."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio.compliance.kaldi as kaldi

WINDOW_SECONDS = 0.025
"""Length of one Kaldi fbank analysis window (25 ms)."""


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

    Frames are 25 ms Hann windows every 10 ms; the time axis is zero-padded or trimmed to
    ``target_frames`` and the result is normalised as ``(x - mean) / std`` (AudioSet
    statistics by default).
    """
    if std <= 0:
        raise ValueError(f"audio_std must be > 0, got {std}")
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (n,), got {tuple(waveform.shape)}")
    window = int(sample_rate * WINDOW_SECONDS)
    if waveform.numel() < window:
        raise ValueError(
            f"waveform has {waveform.numel()} samples; the filterbank needs at least {window} "
            f"(one {WINDOW_SECONDS * 1000:.0f} ms window at {sample_rate} Hz)"
        )
    fbank = kaldi.fbank(
        waveform[None].float(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    fbank = fbank[:target_frames]
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - fbank.shape[0]))
    return ((fbank - mean) / std).T[None].contiguous()


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
    video = frames.permute(3, 0, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    return (video - mean_t) / std_t
