"""Neural network parts: per-modality encoders and fusion heads."""

from crmt.models.encoders import AudioEncoder, VisualEncoder
from crmt.models.heads import ConcatFusion, FusionOutput, OrthogonalFusion

__all__ = ["AudioEncoder", "VisualEncoder", "ConcatFusion", "FusionOutput", "OrthogonalFusion"]
