"""Neural network parts: per-modality encoders and fusion heads."""

from crmt.models.encoders import FrameEncoder, SpectrogramEncoder, build_encoder
from crmt.models.heads import ConcatFusion, FusionOutput, OrthogonalFusion

__all__ = ["FrameEncoder", "SpectrogramEncoder", "build_encoder", "ConcatFusion", "FusionOutput", "OrthogonalFusion"]
