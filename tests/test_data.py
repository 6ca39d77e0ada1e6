"""The data path on real files: MP4 generation with PyAV, decoding, fbank features, bad clips, manifests."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

from crmt.cli import main as crmt_main
from data_modules import ClipDataModule, ClipDecodeError, ClipSettings, EmbeddedAVDataModule, EmbeddedDatasetSpec
from data_modules.decoding import decode_audio, decode_clip, decode_frames, sample_frame_indices
from data_modules.encoding import write_mp4
from data_modules.features import log_mel_fbank, normalize_pixels
from data_modules.manifest import ManifestError, read_manifest
from data_modules.synthetic import generate_embedded_dataset

TINY = EmbeddedDatasetSpec(num_classes=3, train_per_class=2, val_per_class=1, test_per_class=1)
SMALL_CLIP = ClipSettings(audio_frames=50, frame_size=32, fps=None, augment=False)
"""Small inputs from every frame of the tiny clips, without augmentation."""


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A generated dataset: 3 classes, 2 + 1 + 1 clips per class."""
    root = tmp_path_factory.mktemp("embedded")
    generate_embedded_dataset(root, TINY)
    return root


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.mp4"))}


def test_generated_clips_are_real_mp4_with_video_and_audio_streams(tiny_dataset):
    records = read_manifest(tiny_dataset / "manifest.csv", num_classes=3)
    assert [r.split for r in records].count("train") == 6 and len(records) == 12
    assert sorted({r.label for r in records}) == [0, 1, 2]
    with av.open(str(records[0].path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (TINY.video_size, TINY.video_size)
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == TINY.audio_rate and audio.codec_context.channels == 2
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == TINY.fps * TINY.clip_seconds


def test_generation_is_deterministic_by_seed_and_reuses_a_complete_dataset(tiny_dataset, tmp_path):
    again = tmp_path / "again"
    generate_embedded_dataset(again, TINY)
    assert file_digests(again) == file_digests(tiny_dataset)
    assert (again / "manifest.csv").read_bytes() == (tiny_dataset / "manifest.csv").read_bytes()

    clip = again / "clips" / "train" / "c0_000.mp4"
    stamp = clip.stat().st_mtime_ns
    generate_embedded_dataset(again, TINY)
    assert clip.stat().st_mtime_ns == stamp, "an existing dataset of the same spec must not be rewritten"

    other = tmp_path / "other"
    generate_embedded_dataset(other, EmbeddedDatasetSpec(**{**TINY.__dict__, "seed": 1}))
    assert file_digests(other) != file_digests(tiny_dataset)


def test_decoded_clip_has_documented_shapes(tiny_dataset):
    clip = decode_clip(tiny_dataset / "clips" / "val" / "c1_000.mp4", num_frames=3, frame_size=32, train=False)
    assert clip.frames.shape == (3, 32, 32, 3) and clip.frames.dtype == torch.uint8
    assert clip.audio.ndim == 1 and clip.audio.dtype == torch.float32
    assert abs(clip.audio.numel() - 16000 * TINY.clip_seconds) < 0.1 * 16000  # AAC priming/padding only
    assert clip.audio.abs().max() <= 1.0
    path = tiny_dataset / "clips" / "val" / "c1_000.mp4"
    assert torch.equal(decode_frames(path, 3, 32, train=False), clip.frames)
    assert torch.equal(decode_audio(path), clip.audio)


def test_datamodule_batches_have_documented_shapes_and_labels(tiny_dataset):
    clip = ClipSettings(audio_frames=50, num_mel_bins=64, num_frames=2, frame_size=40, fps=None, augment=False)
    data = ClipDataModule(str(tiny_dataset / "manifest.csv"), num_classes=3, clip=clip, batch_size=4, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["audio"].shape == (4, 1, 64, 50) and batch["audio"].dtype == torch.float32
    assert batch["visual"].shape == (4, 3, 2, 40, 40) and batch["visual"].dtype == torch.uint8
    inputs = data.on_after_batch_transfer(dict(batch), 0)  # where the Trainer normalises: on the device
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1, 1)
    assert inputs["visual"].dtype == torch.float32 and inputs["audio"] is batch["audio"]
    torch.testing.assert_close(inputs["visual"], ((batch["visual"].double() / 255 - mean) / std).float())
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    records = data.datasets["train"].records
    assert batch["label"].tolist() == [records[i].label for i in batch["index"].tolist()]
    val = next(iter(data.val_dataloader()))
    assert val["label"].tolist() == [0, 1, 2]
    assert torch.isfinite(val["audio"]).all() and torch.isfinite(val["visual"]).all()


def test_evaluation_frames_are_centred_and_training_frames_stay_in_their_segment():
    assert sample_frame_indices(12, 3, train=False) == [2, 6, 10]
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        indices = sample_frame_indices(12, 3, train=True, generator=generator)
        assert [index // 4 for index in indices] == [0, 1, 2]
    assert sample_frame_indices(2, 3, train=False) == [0, 1, 1]


def test_fbank_of_a_tone_peaks_at_its_mel_bin():
    rate, pitch, bins = 16000, 1000.0, 64
    waveform = torch.sin(2 * math.pi * pitch * torch.arange(rate) / rate) * 0.5
    features = log_mel_fbank(waveform, sample_rate=rate, num_mel_bins=bins, target_frames=120, mean=0.0, std=1.0)
    assert features.shape == (1, bins, 120)
    assert (features[0, :, 100:] == 0).all(), "frames past the 98 of a 1 s clip are zero padding"
    mel = lambda hz: 1127 * math.log(1 + hz / 700)  # noqa: E731
    expected_bin = int((mel(pitch) - mel(20)) / ((mel(rate / 2) - mel(20)) / (bins + 1))) - 1
    peak = features[0, :, :98].mean(dim=1).argmax().item()
    assert abs(peak - expected_bin) <= 1


def nearest_mean_accuracies(root: Path, **spec_settings) -> dict[str, float]:
    """Test accuracy of a nearest-class-mean classifier on simple per-modality statistics of decoded clips:
    the mean spectrum for audio, the mean chromaticity for video; class means come from the train split."""
    data = EmbeddedAVDataModule(
        root=str(root), num_classes=4, train_per_class=8, val_per_class=0, test_per_class=8, num_workers=0, **spec_settings
    )
    data.prepare_data()
    data.setup()

    def features(split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        dataset = data.datasets[split]
        dataset.train = False
        samples = [dataset[i] for i in range(len(dataset))]
        colour = torch.stack([normalize_pixels(s["visual"], *data.pixel_normalization["visual"]).mean(dim=(1, 2, 3)) for s in samples])
        colour = colour - colour.mean(dim=1, keepdim=True)
        return {
            "audio": torch.stack([s["audio"][0].mean(dim=1) for s in samples]),
            "visual": colour / colour.norm(dim=1, keepdim=True),
        }, torch.stack([s["label"] for s in samples])

    (train, train_labels), (test, test_labels) = features("train"), features("test")
    accuracies = {}
    for modality in ("audio", "visual"):
        means = torch.stack([train[modality][train_labels == c].mean(0) for c in range(4)])
        predictions = torch.cdist(test[modality], means).argmin(1)
        accuracies[modality] = (predictions == test_labels).float().mean().item()
    return accuracies


def test_each_class_is_recognisable_from_either_modality_alone(tmp_path):
    accuracies = nearest_mean_accuracies(tmp_path, audio_jitter=0.0, visual_jitter=0.2)
    assert min(accuracies.values()) >= 0.9, accuracies  # chance is 0.25


def test_default_jitter_makes_each_modality_ambiguous_but_informative(tmp_path):
    """The defaults (paper's setting): neighbouring classes overlap in both modalities, so each alone is
    clearly worse than without jitter, and still far above chance (0.25)."""
    separable = nearest_mean_accuracies(tmp_path / "separable", audio_jitter=0.0, visual_jitter=0.2)
    default = nearest_mean_accuracies(tmp_path / "default")
    for modality in ("audio", "visual"):
        assert 0.4 <= default[modality] <= separable[modality] - 0.1, (default, separable)


# ----------------------------------------------------------------- bad clips
@pytest.fixture
def broken_folder(tiny_dataset, tmp_path) -> Path:
    """A manifest of 3 good clips and 3 unusable ones: truncated, empty, audio-only."""
    good = sorted((tiny_dataset / "clips" / "train").glob("*.mp4"))[:3]
    rows = [(str(path), i, "train") for i, path in enumerate(good)]
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio_only = tmp_path / "audio_only.mp4"
    write_mp4(audio_only, video=None, audio=np.zeros((1, 22050), np.float32) + 0.1, audio_rate=22050)
    rows += [(str(truncated), 0, "train"), (str(empty), 1, "train"), (str(audio_only), 2, "train")]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{p},{label},{split}\n" for p, label, split in rows))
    return manifest


def test_bad_clips_raise_one_error_that_names_each_file(broken_folder):
    data = ClipDataModule(str(broken_folder), num_classes=3, num_workers=0)
    with pytest.raises(ClipDecodeError) as error:
        data.setup("fit")
    message = str(error.value)
    assert "3 of 6 clips in the 'train' split" in message
    assert "truncated.mp4" in message and "empty.mp4 (empty file (0 bytes))" in message
    assert "audio_only.mp4 (no video stream)" in message


def test_bad_clips_are_skipped_and_counted_when_configured(broken_folder):
    data = ClipDataModule(str(broken_folder), num_classes=3, clip=SMALL_CLIP, num_workers=0, batch_size=8, on_bad_clip="skip")
    with pytest.warns(UserWarning, match="3 of 6 clips"):
        data.setup("fit")
    assert sorted(Path(path).name for path, _ in data.skipped_clips) == ["audio_only.mp4", "empty.mp4", "truncated.mp4"]
    batch = next(iter(data.train_dataloader()))
    assert batch["label"].shape == (3,)
    assert (batch["visual"].abs().sum(dim=(1, 2, 3, 4)) > 0).all(), "no clip may be zero-filled"


def test_clip_that_breaks_during_decoding_is_dropped_not_zero_filled(tiny_dataset, tmp_path, monkeypatch):
    """A clip that passes the probe but fails in ``__getitem__`` is dropped from its batch (skip) or raised."""
    clip = tmp_path / "later_broken.mp4"
    clip.write_bytes((tiny_dataset / "clips" / "train" / "c0_000.mp4").read_bytes())
    manifest = tmp_path / "manifest.csv"
    good = tiny_dataset / "clips" / "train" / "c1_000.mp4"
    manifest.write_text(f"path,label,split\n{clip},0,train\n{good},1,train\n")
    for policy in ("raise", "skip"):
        data = ClipDataModule(str(manifest), num_classes=2, clip=SMALL_CLIP, num_workers=0, on_bad_clip=policy)
        data.setup("fit")
        clip.write_bytes(b"\x00" * 64)  # broken after the probe
        loader = data.train_dataloader()
        if policy == "raise":
            with pytest.raises(ClipDecodeError, match="later_broken.mp4"):
                next(iter(loader))
        else:
            with pytest.warns(UserWarning, match="dropped 1 of 2 samples"):
                batch = next(iter(loader))
            assert batch["label"].tolist() == [1]
            assert [(Path(path).name, reason) for path, reason in data.skipped_clips] == [
                ("later_broken.mp4", "Invalid data found when processing input")
            ], "the clip dropped while loading is recorded with its reason"
        clip.write_bytes((tiny_dataset / "clips" / "train" / "c0_000.mp4").read_bytes())


def test_decode_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(ClipDecodeError, match="missing.mp4"):
        decode_audio(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ClipDecodeError, match="garbage.mp4"):
        decode_clip(garbage, num_frames=3, frame_size=32, train=False)


@pytest.mark.parametrize(
    "row, match",
    [
        ("clip.mp4,x,train", "line 2: label 'x' is not an integer"),
        ("clip.mp4,5,train", "line 2: label 5 is outside"),
        ("clip.mp4,1,dev", "line 2: split 'dev'"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, row, match):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(f"path,label,split\n{row}\n")
    with pytest.raises(ManifestError, match=match) as error:
        read_manifest(manifest, num_classes=3)
    assert "bad.csv" in str(error.value)


def test_manifest_without_required_columns_is_rejected(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("file,label\nclip.mp4,0\n")
    with pytest.raises(ManifestError, match="missing path, split"):
        read_manifest(manifest)


def composed_data(args: list[str], capsys, monkeypatch) -> dict:
    """The ``data`` section ``python -m crmt fit <args>`` composes, as printed."""
    monkeypatch.setattr("sys.argv", ["crmt"])
    with pytest.raises(SystemExit) as exit_info:
        crmt_main(["fit", "--config", "experiments/jt.yaml", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)["data"]


def test_embedded_data_configs_compose_as_the_cli_reads_them(capsys, monkeypatch):
    """experiments/data/*.yaml name only what differs from the embedded module's defaults; the default
    (read when no data config is given) is label-consistent, the variant misleading."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    default = composed_data([], capsys, monkeypatch)["init_args"]
    explicit = composed_data(["--config", "experiments/data/embedded.yaml"], capsys, monkeypatch)["init_args"]
    misleading = composed_data(
        ["--config", "experiments/data/embedded_misleading.yaml", "--data.init_args.seed=3"], capsys, monkeypatch
    )["init_args"]
    assert explicit == default
    assert (default["audio_confusion"], default["visual_confusion"]) == (0.0, 0.0)
    assert default["audio_jitter"] < default["visual_jitter"], "audio is the stronger modality"
    assert (misleading["audio_confusion"], misleading["visual_confusion"]) == (0.05, 0.3)
    assert misleading["root"] == "data/embedded_misleading" and default["root"] == "data/embedded"
    assert misleading["seed"] == 3 and misleading["dataset_seed"] == 0, "the loader seed never changes the clips"
    assert misleading["test_per_class"] == default["test_per_class"] == 50
    assert misleading["clip"] == default["clip"]


def test_clip_settings_are_plain_hyperparameters_that_load_with_weights_only(tmp_path):
    """``clip`` is kept in ``hparams`` as a dict of its fields, so a checkpoint holding the data module's
    hyperparameters loads with ``weights_only=True`` (a dataclass would need unpickling)."""
    data = EmbeddedAVDataModule(root=str(tmp_path / "embedded"), clip=SMALL_CLIP)
    assert data.hparams["clip"] == {name: getattr(SMALL_CLIP, name) for name in SMALL_CLIP.__dataclass_fields__}
    assert "manifest" not in data.hparams and data.settings is SMALL_CLIP
    torch.save({"datamodule_hyper_parameters": dict(data.hparams)}, tmp_path / "hparams.ckpt")
    assert torch.load(tmp_path / "hparams.ckpt", weights_only=True)["datamodule_hyper_parameters"]["clip"]["frame_size"] == 32


def test_a_clip_dropped_inside_a_dataloader_worker_is_recorded(tiny_dataset, tmp_path):
    clip = tmp_path / "later_broken.mp4"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,label,split\n{clip},0,train\n{tiny_dataset / 'clips' / 'train' / 'c1_000.mp4'},1,train\n")
    clip.write_bytes((tiny_dataset / "clips" / "train" / "c0_000.mp4").read_bytes())
    data = ClipDataModule(str(manifest), num_classes=2, clip=SMALL_CLIP, num_workers=2, batch_size=1, on_bad_clip="skip")
    data.setup("fit")
    clip.write_bytes(b"\x00" * 64)
    labels = [batch["label"].tolist() for batch in data.train_dataloader() if batch is not None]  # warns in the worker
    assert labels == [[1]]
    assert [Path(path).name for path, _ in data.skipped_clips] == ["later_broken.mp4"]


@pytest.mark.parametrize(("split", "stage", "message"), [
    ("test", "test", "'test' split of .* has no usable clips; there is nothing to test"),
    ("val", "fit", "'val' split of .* has no usable clips; validation needs some"),
])
def test_an_empty_split_is_an_error_naming_it(tiny_dataset, tmp_path, split, stage, message):
    rows = [f"{path},{i % 3},train" for i, path in enumerate(sorted((tiny_dataset / "clips" / "train").glob("*.mp4")))]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    data = ClipDataModule(str(manifest), num_classes=3, clip=SMALL_CLIP, num_workers=0)
    data.setup(stage)
    with pytest.raises(ValueError, match=message):
        getattr(data, f"{split}_dataloader")()
