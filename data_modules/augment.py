"""Training-time frame augmentation: random resized crop and horizontal flip, per frame.

The official CRMT / OGM-GE loaders draw ``RandomResizedCrop(224)`` and
``RandomHorizontalFlip()`` independently for every frame of a training clip. Here the crop is
taken from the (cached) ``S x S`` frame and resized back to ``S x S``; evaluation frames are
never augmented. The draws are made in the DataLoader workers (:func:`draw_crops`, from
``generator``: a per-sample generator, or torch's global RNG when ``None``) and travel with the
uint8 frames; the crops, resizes and flips run on the device (:func:`crop_resize_flip`, called by
the data module's ``normalize`` after the transfer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CROP_SCALE = (0.08, 1.0)
"""Range of the crop's area as a fraction of the frame's (torchvision's default)."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Range of the crop's aspect ratio w / h (torchvision's default)."""
_ATTEMPTS = 10


def random_crop_box(height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A random ``(top, left, h, w)`` box of area in ``CROP_SCALE`` and aspect ratio in ``CROP_RATIO``
    (the whole frame's central crop after ten misses, as torchvision does)."""
    area = height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(_ATTEMPTS):
        draws = torch.rand(2, generator=generator).tolist()
        target = area * (CROP_SCALE[0] + draws[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
        ratio = math.exp(log_low + draws[1] * (log_high - log_low))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    return (height - h) // 2, (width - w) // 2, h, w


CROP_SUFFIX = "_crop"
"""A training batch carries, beside each augmented pixel modality ``name``, the per-frame draws
``name + CROP_SUFFIX`` (B, T, 6) that :func:`crop_resize_flip` applies on the device."""


def draw_crops(frames: int, height: int, width: int, *, flip_negates: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The random resized crop and horizontal flip of each of ``frames`` frames of ``height`` x ``width``,
    drawn from ``generator`` (per frame: :func:`random_crop_box`, then a coin flip), as int64
    (frames, 6) rows ``(top, left, h, w, flip, negated)``: ``negated`` is the channel a flip turns into
    255 - value (``flip_negates``: 0 for flow images, whose u component a mirror reverses), -1 for none."""
    rows = []
    for _ in range(frames):
        top, left, h, w = random_crop_box(height, width, generator)
        flip = int(bool(torch.rand(1, generator=generator) < 0.5))
        rows.append((top, left, h, w, flip, -1 if flip_negates is None else flip_negates))
    return torch.tensor(rows, dtype=torch.int64).reshape(frames, 6)


def _source_coordinates(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) source coordinates of an output row (or column) of ``size`` pixels resized from the
    box [start, start + length): F.interpolate's bilinear, half-pixel centres, clamped to the box."""
    out = torch.arange(size, device=start.device, dtype=torch.float32)
    offset = ((out[None] + 0.5) * (length[:, None] / size) - 0.5).clamp(min=0)
    return start[:, None] + torch.minimum(offset, length[:, None] - 1)


def crop_resize_flip(pixels: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Apply :func:`draw_crops`' draws where ``pixels`` are (the device): uint8 (B, C, T, H, W) and
    ``crops`` (B, T, 6) -> float32 (B, C, T, H, W) in [0, 255]. Each frame's box is resized back to
    H x W (bilinear, as ``F.interpolate`` on the box; boxes are never larger than the frame, so this
    only enlarges), mirrored where ``flip``, with channel ``negated`` turned into 255 - value there."""
    batch, channels, frames, height, width = pixels.shape
    draws = crops.to(pixels.device).reshape(batch * frames, 6)
    top, left, h, w, flip, negated = draws.unbind(1)
    y = _source_coordinates(top.float(), h.float(), height)
    x = _source_coordinates(left.float(), w.float(), width)
    x = torch.where(flip[:, None].bool(), x.flip(1), x)
    grid = torch.stack(
        (
            (2 * x / max(width - 1, 1) - 1)[:, None, :].expand(-1, height, -1),
            (2 * y / max(height - 1, 1) - 1)[:, :, None].expand(-1, -1, width),
        ),
        dim=-1,
    )
    images = pixels.transpose(1, 2).reshape(batch * frames, channels, height, width).float()
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    negate = (flip.bool()[:, None] & (negated[:, None] == torch.arange(channels, device=out.device)[None]))[:, :, None, None]
    out = torch.where(negate, 255 - out, out)
    return out.reshape(batch, frames, channels, height, width).transpose(1, 2)
