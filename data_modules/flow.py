"""Dense optical flow between two frames, stored as uint8 images (the TSN / CRMT convention).

CRMT's UCF101 extractor computes OpenCV's Dual-TV-L1 flow on grey frames, clips it to
+-15 px and maps it linearly to [0, 255] (u and v as two grey images). Dual-TV-L1 lives in
``opencv-contrib``; this module uses OpenCV's Farneback dense flow from the main
``opencv-python-headless`` package with the same clipping and quantisation. The loader turns
the uint8 pair into floats in [0, 1] and normalises them with mean 0.1307, std 0.3081.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np

FLOW_BOUND: Final = 15.0
"""Flow components are clipped to [-FLOW_BOUND, FLOW_BOUND] pixels before quantisation."""
FLOW_MEAN: Final = (0.1307, 0.1307)
FLOW_STD: Final = (0.3081, 0.3081)
"""Per-channel statistics of flow images in [0, 1], as CRMT's ``rob_test.py`` normalises them."""


def dense_flow(previous: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Farneback flow from grey uint8 ``previous`` (H, W) to ``following`` (H, W), as float32 (H, W, 2) in pixels."""
    if previous.shape != following.shape or previous.ndim != 2 or previous.dtype != np.uint8:
        raise ValueError(
            f"need two grey uint8 frames of one shape, got {previous.dtype} {previous.shape} and {following.shape}"
        )
    return cv2.calcOpticalFlowFarneback(
        previous, following, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
    )


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow (..., 2) in pixels to uint8: clipped to [-bound, bound], then mapped linearly onto [0, 255]."""
    if bound <= 0:
        raise ValueError(f"flow bound must be > 0, got {bound}")
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.round(scaled).astype(np.uint8)


def flow_images(pairs: np.ndarray, size: int, bound: float = FLOW_BOUND) -> np.ndarray:
    """Quantised flow of each grey frame pair ``(N, 2, H, W)`` uint8, resized to ``(N, size, size, 2)`` uint8.

    Flow is computed at the video's own resolution and the u / v images are then resized
    (bilinear), as the official pipeline resizes its saved flow images.
    """
    if pairs.ndim != 4 or pairs.shape[1] != 2:
        raise ValueError(f"expected grey frame pairs of shape (N, 2, H, W), got {pairs.shape}")
    images = []
    for previous, following in pairs:
        quantized = quantize_flow(dense_flow(previous, following), bound)
        images.append(cv2.resize(quantized, (size, size), interpolation=cv2.INTER_LINEAR))
    return np.stack(images)
