"""Audio-visual (and RGB + flow) data for crmt.

- ``decoding``: decode a clip's audio and sampled frames with PyAV (``ClipDecodeError``).
- ``features``: log-mel filterbanks and normalised frame tensors from decoded media.
- ``flow``: dense optical flow as uint8 images; ``augment``: training crops and flips.
- ``manifest``: the ``path,label,split`` CSV manifest (``read_manifest``) and ``ClipRecord``.
- ``clips``: clip pipelines (``ClipSettings``), the clip dataset, its None-dropping collate,
  the shared ``MediaDataModule`` and the manifest-driven ``ClipDataModule``.
- ``rgb_flow``: the RGB + optical-flow pipeline (``RgbFlowSettings``).
- ``cache``, ``prepare_clips``, ``prepare``: the preprocessing cache, filling it in parallel,
  and its command line (``python -m data_modules.prepare``).
- ``splits``, ``media``, ``split_lists``: official split files, finding media files, and the
  base of the real-dataset modules ``kinetics_sounds``, ``vggsound``, ``ucf101``, ``cremad``.
- ``encoding``: write MP4 clips (H.264 or MPEG-4 video, AAC audio) with PyAV.
- ``synthetic``: the deterministic embedded dataset generator (``EmbeddedDatasetSpec``).
- ``embedded``: ``EmbeddedAVDataModule``, which generates that dataset on first use.
"""

from data_modules.clips import ClipDataModule, ClipSettings, MediaDataModule
from data_modules.cremad import CremadDataModule
from data_modules.decoding import ClipDecodeError
from data_modules.embedded import EmbeddedAVDataModule
from data_modules.kinetics_sounds import KineticsSoundsDataModule
from data_modules.manifest import read_manifest
from data_modules.rgb_flow import RgbFlowSettings
from data_modules.synthetic import EmbeddedDatasetSpec, generate_embedded_dataset
from data_modules.ucf101 import UCF101DataModule
from data_modules.vggsound import VGGSoundDataModule

__all__ = [
    "ClipDataModule",
    "ClipDecodeError",
    "ClipSettings",
    "CremadDataModule",
    "EmbeddedAVDataModule",
    "EmbeddedDatasetSpec",
    "KineticsSoundsDataModule",
    "MediaDataModule",
    "RgbFlowSettings",
    "UCF101DataModule",
    "VGGSoundDataModule",
    "generate_embedded_dataset",
    "read_manifest",
]
