"""Training-time frame augmentation: random resized crop and horizontal flip, per frame.

The official CRMT / OGM-GE loaders draw ``RandomResizedCrop(224)`` and
``RandomHorizontalFlip()`` independently for every frame of a training clip. Here the crop is
taken from the (cached) ``S x S`` frame and resized back to ``S x S``; evaluation frames are
never augmented. Random numbers come from ``generator`` (torch's global RNG when ``None``,
which DataLoader workers seed per epoch).
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


def crop_and_flip(
    frames: torch.Tensor, *, flip_negates: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random resized crop (back to the input size) and a coin-flip horizontal flip of each frame.

    ``frames`` is uint8 ``(T, H, W, C)``; the result has the same shape and dtype. For flow
    images (uint8, 128 = no motion) pass ``flip_negates=0``: a flip mirrors the horizontal
    component too, ``u -> 255 - u``.
    """
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    _, height, width, _ = frames.shape
    out = []
    for frame in frames:
        top, left, h, w = random_crop_box(height, width, generator)
        crop = frame[top : top + h, left : left + w].permute(2, 0, 1)[None].float()
        image = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
        image = image.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
        if bool(torch.rand(1, generator=generator) < 0.5):
            image = image.flip(1)
            if flip_negates is not None:
                image[..., flip_negates] = 255 - image[..., flip_negates]
        out.append(image)
    return torch.stack(out)
