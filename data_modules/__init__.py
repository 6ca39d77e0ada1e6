"""Audio-visual data for crmt.

- ``decoding``: decode one MP4 clip's audio and sampled frames with PyAV (``ClipDecodeError``).
- ``features``: log-mel filterbanks and normalised frame tensors from decoded media.
- ``manifest``: the ``path,label,split`` CSV manifest (``read_manifest``).
- ``clips``: the clip dataset, its None-dropping collate and ``ClipDataModule``.
- ``encoding``: write MP4 clips (H.264 or MPEG-4 video, AAC audio) with PyAV.
- ``synthetic``: the deterministic embedded dataset generator (``EmbeddedDatasetSpec``).
- ``embedded``: ``EmbeddedAVDataModule``, which generates that dataset on first use.
"""

from data_modules.clips import ClipDataModule
from data_modules.decoding import ClipDecodeError
from data_modules.embedded import EmbeddedAVDataModule
from data_modules.manifest import read_manifest
from data_modules.synthetic import EmbeddedDatasetSpec, generate_embedded_dataset

__all__ = [
    "ClipDataModule",
    "ClipDecodeError",
    "EmbeddedAVDataModule",
    "EmbeddedDatasetSpec",
    "generate_embedded_dataset",
    "read_manifest",
]
