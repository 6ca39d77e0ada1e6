"""Crops and flips drawn in the workers, applied on the device: the values of resizing each frame's box
on the CPU (the torchvision-style path crmt used before), from the same draws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data_modules import ClipDataModule, ClipSettings, EmbeddedDatasetSpec
from data_modules.augment import CROP_SUFFIX, crop_resize_flip, draw_crops, random_crop_box
from data_modules.features import channels_first, normalize_pixels
from data_modules.synthetic import generate_embedded_dataset


def crop_on_cpu(frames: torch.Tensor, generator: torch.Generator, flip_negates: int | None = None) -> torch.Tensor:
    """Reference: per frame a box and a coin flip from ``generator``; the box resized back with
    F.interpolate (bilinear, antialias), rounded to uint8, mirrored. uint8 (T, H, W, C) in and out."""
    _, height, width, _ = frames.shape
    out = []
    for frame in frames:
        top, left, h, w = random_crop_box(height, width, generator)
        crop = frame[top : top + h, left : left + w].permute(2, 0, 1)[None].float()
        image = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
        image = image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        if bool(torch.rand(1, generator=generator) < 0.5):
            image = image.flip(1)
            if flip_negates is not None:
                image[..., flip_negates] = 255 - image[..., flip_negates]
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize(("channels", "flip_negates"), [(3, None), (2, 0)])
def test_device_crops_equal_the_cpu_resize_of_the_same_draws(channels, flip_negates):
    frames = [torch.randint(0, 256, (4, 24, 20, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(s))
              for s in range(5)]
    reference = torch.stack([channels_first(crop_on_cpu(f, torch.Generator().manual_seed(10 + i), flip_negates))
                             for i, f in enumerate(frames)])
    crops = torch.stack([draw_crops(4, 24, 20, flip_negates=flip_negates, generator=torch.Generator().manual_seed(10 + i))
                         for i in range(5)])
    assert (crops[..., 2] < 24).any() and crops[..., 4].any() and not crops[..., 4].all(), "real crops and both flips"
    out = crop_resize_flip(torch.stack([channels_first(f) for f in frames]), crops)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert (out - reference.float()).abs().max() <= 0.5 + 1e-3, "the reference rounds to uint8; nothing else differs"


def test_an_augmented_training_batch_carries_its_draws_and_normalise_applies_them(tmp_path):
    generate_embedded_dataset(tmp_path, EmbeddedDatasetSpec(num_classes=3, train_per_class=4, val_per_class=1, test_per_class=1))
    clip = ClipSettings(audio_frames=50, num_mel_bins=64, num_frames=2, frame_size=40, fps=None, augment=True)
    data = ClipDataModule(str(tmp_path / "manifest.csv"), num_classes=3, clip=clip, batch_size=4, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["visual"].dtype == torch.uint8 and batch["visual" + CROP_SUFFIX].shape == (4, 2, 6)
    assert "visual" + CROP_SUFFIX not in next(iter(data.val_dataloader())), "evaluation frames are never cropped"
    inputs = data.on_after_batch_transfer(dict(batch), 0)
    assert list(inputs) == ["visual", "audio", "label", "index"]
    expected = normalize_pixels(crop_resize_flip(batch["visual"], batch["visual" + CROP_SUFFIX]), *data.pixel_normalization["visual"])
    assert torch.equal(inputs["visual"], expected)
    assert torch.equal(data.normalize(data.normalize(dict(batch)))["visual"], inputs["visual"]), "normalising twice changes nothing"
