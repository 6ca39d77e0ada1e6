"""The real-dataset modules on tiny fake copies in each dataset's official layout (real MP4 / AVI /
FLV / WAV files), the preprocessing cache (equal tensors, resumable preparation), broken clips,
and the official split files shipped in shared/."""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import warnings
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fake_media import SPEED, frames, tone, write_video, write_wav
from helpers import make_trainer
from lightning.pytorch import seed_everything

from data_modules import (
    ClipDecodeError,
    ClipSettings,
    CremadDataModule,
    KineticsSoundsDataModule,
    MediaDataModule,
    RgbFlowSettings,
    UCF101DataModule,
    VGGSoundDataModule,
)
from data_modules.augment import crop_resize_flip, draw_crops
from data_modules.encoding import write_mp4
from data_modules.flow import flow_images
from data_modules.prepare import data_arguments
from data_modules.prepare import main as prepare_main
from data_modules.splits import (
    CREMAD_CLASSES,
    KS_CLASSES,
    SplitFileError,
    read_cremad_classes,
    read_cremad_split,
    read_ks_split,
    read_vggsound_csv,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_SPLITS = REPO.parent / "shared" / "data" / "splits"
TINY_LOADER = {"batch_size": 4, "num_workers": 0, "cache_dir": None}
TINY = {"frame_size": 32, "num_frames": 3, "augment": False}
TINY_AUDIO = {**TINY, "audio_frames": 64, "num_mel_bins": 32}
"""Small clip settings without augmentation (the rest the paper's defaults)."""


def module_arguments(settings: type, tiny: dict[str, object], overrides: dict[str, object]) -> dict[str, object]:
    """Data module arguments: the tiny loader and ``clip`` (a ``settings``) of ``tiny``, each overridden by
    ``overrides`` (the names of ``settings``' fields go to ``clip``)."""
    clip_fields = {field.name for field in fields(settings)}
    clip = {**tiny, **{name: value for name, value in overrides.items() if name in clip_fields}}
    loader = {name: value for name, value in overrides.items() if name not in clip_fields}
    return {**TINY_LOADER, **loader, "clip": settings(**clip)}
SECONDS, FPS, SIZE = 1.5, 10, (32, 32)


def youtube_id(label: int, split: str, index: int) -> str:
    """An 11-character id with the '-' and '_' that real YouTube ids contain."""
    return f"k{label:02d}{split[:2]}{index}_a-bc"


# ---------------------------------------------------------------- fake datasets
KS_LABELS = (0, 7, 30)


@pytest.fixture(scope="module")
def ks_fake(tmp_path_factory) -> dict[str, Path]:
    """Kinetics downloader layout ``<split>/<class>/<id>_<start>_<end>.mp4``; a CRMT train list and a
    CRMT test list (bare YouTube ids)."""
    root = tmp_path_factory.mktemp("ks")
    train, test = [], []
    for label in KS_LABELS:
        for index in range(2):
            name = f"{youtube_id(label, 'train', index)}_{10 * index:06d}_{10 * index + 10:06d}"
            video = frames(label, SECONDS, FPS, SIZE, seed=index)
            write_video(
                root / "media" / "train" / KS_CLASSES[label] / f"{name}.mp4",
                video,
                tone(label, SECONDS, 22050),
                audio_rate=22050,
            )
            train.append(f"{name} {label}")
        test_id = youtube_id(label, "test", 0)
        write_video(
            root / "media" / "val" / KS_CLASSES[label] / f"{test_id}_000003_000013.mp4",
            frames(label, SECONDS, FPS, SIZE, 9),
            tone(label, SECONDS, 16000),
        )
        test.append(f"{test_id} {label}")
    (root / "ks_train_overlap.txt").write_text("\n".join(train) + "\n")
    (root / "ks_test_overlap.txt").write_text("\n".join(test) + "\n")
    return {"root": root / "media", "train": root / "ks_train_overlap.txt", "test": root / "ks_test_overlap.txt"}


def ks_module(fake: dict[str, Path], **overrides) -> KineticsSoundsDataModule:
    settings = module_arguments(ClipSettings, TINY_AUDIO, overrides)
    return KineticsSoundsDataModule(str(fake["root"]), str(fake["train"]), str(fake["test"]), **settings)


VGG_LABELS = ("cattle, bovinae cowbell", "dog barking", "playing harp")


@pytest.fixture(scope="module")
def vgg_fake(tmp_path_factory) -> dict[str, Path]:
    """``vggsound.csv`` (a label with a comma) and flat ``<id>_<start:06d>.mp4`` files; one file uses
    OGM-GE's unpadded ``<id>_<start>`` name."""
    root = tmp_path_factory.mktemp("vggsound")
    rows = []
    for label, text in enumerate(VGG_LABELS):
        for split, count in (("train", 2), ("test", 1)):
            for index in range(count):
                clip_id, start = youtube_id(label, split, index), 30 * index + 4
                file = (
                    f"{clip_id}_{start}.mp4"
                    if (label, split, index) == (1, "train", 1)
                    else f"{clip_id}_{start:06d}.mp4"
                )
                write_video(
                    root / "video" / file, frames(label, SECONDS, FPS, SIZE, index), tone(label, SECONDS, 16000)
                )
                rows.append(f'{clip_id},{start},"{text}",{split}')
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    return {"root": root / "video", "csv": root / "vggsound.csv"}


UCF_CLASSES = ("ApplyEyeMakeup", "Biking", "HandstandPushups")


@pytest.fixture(scope="module")
def ucf_fake(tmp_path_factory) -> dict[str, Path]:
    """``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (video only, 40x32) and ``ucfTrainTestlist`` with three
    splits (groups 1-2 test in split 1, groups 3-4 in split 2, ...). The HandstandPushups files are
    spelled ``HandStandPushups``, as in the real dataset."""
    root = tmp_path_factory.mktemp("ucf101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(UCF_CLASSES)))
    clips = []
    for label, name in enumerate(UCF_CLASSES):
        spelled = "HandStandPushups" if name == "HandstandPushups" else name
        for group in range(1, 7):
            relative = f"{name}/v_{spelled}_g{group:02d}_c01.avi"
            write_video(root / "UCF-101" / relative, frames(label, SECONDS, FPS, (32, 40), group))
            clips.append((relative, label, group))
    for split in (1, 2, 3):
        test_groups = {2 * split - 1, 2 * split}
        (lists / f"trainlist0{split}.txt").write_text(
            "".join(f"{rel} {label + 1}\r\n" for rel, label, group in clips if group not in test_groups)
        )
        (lists / f"testlist0{split}.txt").write_text(
            "".join(f"{rel}\r\n" for rel, _, group in clips if group in test_groups)
        )
    return {"root": root / "UCF-101", "lists": lists}


def ucf_module(fake: dict[str, Path], **overrides) -> UCF101DataModule:
    settings = module_arguments(RgbFlowSettings, TINY, overrides)
    return UCF101DataModule(str(fake["root"]), str(fake["lists"]), **settings)


CREMAD_CLIPS = [(f"10{actor:02d}_IEO_{code}_XX", code) for actor in (1, 2) for code in ("NEU", "HAP", "ANG")]


@pytest.fixture(scope="module")
def cremad_fake(tmp_path_factory) -> dict[str, Path]:
    """``VideoFlash/<clip>.flv`` (with its own AAC track) and ``AudioWAV/<clip>.wav`` (16 kHz mono);
    OGM-GE's csv lists and a ``stat.csv`` with a BOM and CRLF line ends."""
    root = tmp_path_factory.mktemp("cremad")
    for index, (name, code) in enumerate(CREMAD_CLIPS):
        label = CREMAD_CLASSES.index(code)
        write_video(
            root / "VideoFlash" / f"{name}.flv",
            frames(label, SECONDS, FPS, SIZE, index),
            tone(5, SECONDS, 22050),
            audio_rate=22050,
        )
        write_wav(root / "AudioWAV" / f"{name}.wav", tone(label, 2.0, 16000), 16000)
    (root / "train.csv").write_text(
        "".join(f"{name},{code}\n" for name, code in CREMAD_CLIPS if name.startswith("1001"))
    )
    (root / "test.csv").write_text(
        "".join(f"{name},{code}\n" for name, code in CREMAD_CLIPS if name.startswith("1002"))
    )
    (root / "stat.csv").write_bytes("\ufeff".encode() + "".join(f"{c}\r\n" for c in CREMAD_CLASSES).encode())
    return {"root": root, "train": root / "train.csv", "test": root / "test.csv", "stat": root / "stat.csv"}


def cremad_module(fake: dict[str, Path], **overrides) -> CremadDataModule:
    settings = module_arguments(ClipSettings, TINY_AUDIO, overrides)
    return CremadDataModule(
        str(fake["root"]), str(fake["train"]), str(fake["test"]), classes_file=str(fake["stat"]), **settings
    )


# ---------------------------------------------------------------- shared checks
def first_batch(data: MediaDataModule, split: str) -> dict[str, torch.Tensor]:
    """The split's first batch as the model receives it: uint8 pixels normalised after the transfer."""
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[split]()
    batch = next(iter(loader))
    for name in data.input_shapes:
        expected = torch.uint8 if name in data.pixel_normalization else torch.float32
        assert batch[name].dtype == expected, f"{name} leaves the loader as {batch[name].dtype}"
    return data.on_after_batch_transfer(batch, 0)


def check_batch(data: MediaDataModule, batch: dict[str, torch.Tensor], split: str) -> None:
    """One float32 tensor per modality of ``input_shapes``, labels matching the records at ``index``."""
    assert list(batch) == [*data.input_shapes, "label", "index"]
    size = batch["label"].shape[0]
    for name, shape in data.input_shapes.items():
        assert batch[name].shape == (size, *shape) and batch[name].dtype == torch.float32, name
        assert torch.isfinite(batch[name]).all()
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    records = data.datasets[split].records
    assert batch["label"].tolist() == [records[i].label for i in batch["index"].tolist()]


def eval_tensors(data: MediaDataModule, split: str) -> list[dict[str, torch.Tensor]]:
    dataset = data.datasets[split]
    return [dataset[i] for i in range(len(dataset))]


def assert_cache_matches_decoding(make_module, tmp_path: Path, monkeypatch, pipeline: type) -> MediaDataModule:
    """Prepare a cache in worker processes; the cached data module (which must not decode) gives the
    same evaluation tensors as decoding on the fly."""
    on_the_fly = make_module(cache_dir=None)
    on_the_fly.setup("test")
    expected = eval_tensors(on_the_fly, "test")

    cached = make_module(cache_dir=str(tmp_path / "cache"))
    report = cached.prepare_cache(workers=2, progress=False)
    assert report.failed == {} and report.written == report.total > 0
    monkeypatch.setattr(
        pipeline, "extract", lambda self, record: pytest.fail(f"decoded {record.path} despite the cache")
    )
    cached.setup("test")
    got = eval_tensors(cached, "test")
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    return cached


# ---------------------------------------------------------------- official split files
needs_shared = pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason=f"{SHARED_SPLITS} not present")


@needs_shared
@pytest.mark.parametrize(
    "file, rows",
    [
        ("ks_train_overlap.txt", 20715),
        ("ks_test_overlap.txt", 1376),
        ("ks_ogmge_train.txt", 14799),
        ("ks_ogmge_test.txt", 2597),
    ],
)
def test_real_kinetics_sounds_lists_have_31_classes(file, rows):
    entries = read_ks_split(SHARED_SPLITS / file)
    assert len(entries) == rows
    assert sorted({entry.label for entry in entries}) == list(range(31)) == list(range(len(KS_CLASSES)))
    assert len({entry.name for entry in entries}) == rows


@needs_shared
def test_real_cremad_lists_have_6_classes_in_stat_order():
    assert read_cremad_classes(SHARED_SPLITS / "cremad_stat.csv") == list(CREMAD_CLASSES)
    counts = {
        file: read_cremad_split(SHARED_SPLITS / file)
        for file in ("cremad_train.csv", "cremad_test.csv", "cremad_data.csv")
    }
    assert [len(entries) for entries in counts.values()] == [6698, 744, 7442]
    for entries in counts.values():
        assert sorted({entry.label for entry in entries}) == list(range(6))
    assert {e.name for e in counts["cremad_train.csv"]}.isdisjoint(e.name for e in counts["cremad_test.csv"])


def test_kinetics_annotation_csv_is_filtered_to_kinetics_sounds(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "playing bagpipes,abcdefghijk,12,22,train\n"
        "abseiling,zzzzzzzzzzz,0,10,train\n"
        '"tickling",-aB_3-x1Y2z,100,110,train\n'
    )
    entries = read_ks_split(csv)
    assert [(e.name, e.label) for e in entries] == [
        ("abcdefghijk_000012_000022", KS_CLASSES.index("playing bagpipes")),
        ("-aB_3-x1Y2z_000100_000110", 30),
    ]
    assert len(KS_CLASSES) == len(set(KS_CLASSES)) == 31 and list(KS_CLASSES) == sorted(KS_CLASSES)


@pytest.mark.parametrize(
    "reader, text, match",
    [
        (read_ks_split, "clip_a 31\n", "line 1: label 31 is outside"),
        (read_ks_split, "clip_a,10,2\nclip_b 1 2 3 4\n", "line 2: expected"),
        (read_cremad_split, "1001_IEO_NEU_XX,NEU\n1001_IEO_XXX_XX,XXX\n", "line 2: emotion 'XXX'"),
        (read_vggsound_csv, "abc,1,dog,train\nabc,1,dog,dev\n", "line 2: expected"),
    ],
)
def test_split_file_errors_name_file_and_line(tmp_path, reader, text, match):
    path = tmp_path / "split.txt"
    path.write_text(text)
    with pytest.raises(SplitFileError, match=match) as error:
        reader(path)
    assert "split.txt" in str(error.value)


# ---------------------------------------------------------------- per dataset
def test_kinetics_sounds_fake_is_parsed_prepared_and_loaded(ks_fake, tmp_path, monkeypatch):
    data = ks_module(ks_fake)
    assert data.num_classes == 31
    assert data.input_shapes == {"visual": [3, 3, 32, 32], "audio": [1, 32, 64]}
    assert data.pixel_normalization == {"visual": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
    data.setup("fit")
    assert len(data.datasets["train"]) == 6 and len(data.datasets["val"]) == 3  # validation on the test list
    assert {Path(r.path).parent.name for r in data.datasets["val"].records} == {KS_CLASSES[i] for i in KS_LABELS}
    check_batch(data, first_batch(data, "train"), "train")
    val = first_batch(data, "val")
    check_batch(data, val, "val")
    assert val["label"].tolist()[:3] == list(KS_LABELS)
    cached = assert_cache_matches_decoding(lambda **kw: ks_module(ks_fake, **kw), tmp_path, monkeypatch, ClipSettings)
    assert len(list(cached.cache.folder.glob("clips/*/*.npz"))) == 9


def test_kinetics_sounds_audio_is_normalised_by_twice_the_std(ks_fake):
    """Defaults follow the official code: (fbank + 4.503877) / (2 * 5.141276); the factor is a setting."""
    twice, once = ks_module(ks_fake, audio_frames=200), ks_module(ks_fake, audio_frames=200, audio_std_factor=1.0)
    twice.setup("test")
    once.setup("test")
    a, b = twice.datasets["test"][0]["audio"], once.datasets["test"][0]["audio"]
    torch.testing.assert_close(a * 2, b)
    padding = (0 + 4.503877) / (2 * 5.141276)  # the frames past the 1.5 s clip are zero-padded before normalising
    assert torch.allclose(a[0, :, -1], torch.full((32,), padding))


def test_vggsound_fake_is_parsed_prepared_and_loaded(vgg_fake, tmp_path, monkeypatch):
    def make(**overrides) -> VGGSoundDataModule:
        settings = module_arguments(ClipSettings, TINY_AUDIO, overrides)
        return VGGSoundDataModule(str(vgg_fake["root"]), str(vgg_fake["csv"]), **settings)

    data = make()
    assert data.num_classes == 3 and data.classes == sorted(VGG_LABELS)
    data.setup("fit")
    records = data.datasets["train"].records
    assert len(records) == 6 and any(r.path.name == f"{youtube_id(1, 'train', 1)}_34.mp4" for r in records)
    check_batch(data, first_batch(data, "train"), "train")
    assert first_batch(data, "val")["label"].tolist() == [sorted(VGG_LABELS).index(t) for t in VGG_LABELS]
    assert_cache_matches_decoding(make, tmp_path, monkeypatch, ClipSettings)


def test_ucf101_fake_gives_rgb_and_flow_for_each_split(ucf_fake, tmp_path, monkeypatch):
    data = ucf_module(ucf_fake)
    assert data.num_classes == 3
    assert data.input_shapes == {"rgb": [3, 3, 32, 32], "flow": [2, 3, 32, 32]}
    assert data.pixel_normalization["flow"] == ((0.1307, 0.1307), (0.3081, 0.3081))
    data.setup("fit")
    train, test = data.datasets["train"].records, data.datasets["val"].records
    assert len(train) == 12 and len(test) == 6
    assert {r.path.name[-11:-8] for r in test} == {"g01", "g02"}
    assert {r.label for r in test if "HandStand" in r.path.name} == {2}
    check_batch(data, first_batch(data, "train"), "train")
    split3 = ucf_module(ucf_fake, split=3)
    split3.setup("test")
    assert {r.path.name[-11:-8] for r in split3.datasets["test"].records} == {"g05", "g06"}

    sample = data.datasets["val"][0]
    flow = sample["flow"] / 255  # in [0, 1]; 0.5 is no motion
    assert flow[0].max() > 0.5 + SPEED / 30 * 0.5, "the square moves right: u > 0 somewhere"
    assert_cache_matches_decoding(lambda **kw: ucf_module(ucf_fake, **kw), tmp_path, monkeypatch, RgbFlowSettings)


def test_flow_images_measure_motion_in_both_directions():
    rng = np.random.default_rng(0)
    texture = (rng.random((48, 64)) * 255).astype(np.uint8)
    texture = np.asarray(
        torch.nn.functional.avg_pool2d(torch.tensor(texture[None, None], dtype=torch.float32), 3, 1, 1)[0, 0]
    ).astype(np.uint8)
    shifted = np.roll(texture, (1, 3), axis=(0, 1))  # 3 px right, 1 px down
    images = flow_images(np.stack([np.stack([texture, shifted])]), size=32)
    centre = images[0, 8:24, 8:24].astype(float)
    u, v = (centre[..., c].mean() / 255 * 30 - 15 for c in (0, 1))
    assert u == pytest.approx(3, abs=0.8) and v == pytest.approx(1, abs=0.8)
    assert images.shape == (1, 32, 32, 2) and images.dtype == np.uint8


def test_flipping_flow_mirrors_its_horizontal_component():
    flow = torch.full((1, 2, 40, 8, 8), 200, dtype=torch.uint8)  # (B, C, T, H, W)
    crops = draw_crops(40, 8, 8, flip_negates=0, generator=torch.Generator().manual_seed(0))
    flipped = crop_resize_flip(flow, crops[None])[0].round()  # bilinear weights of a flat image sum to 1 +- 1 ulp
    u = flipped[0].flatten(1)
    assert ((u == 200).all(1) | (u == 55).all(1)).all()
    assert 5 < (u[:, 0] == 55).sum() < 35, "about half the frames are flipped"
    assert torch.equal(u[:, 0] == 55, crops[:, 4] == 1)
    assert (flipped[1] == 200).all()


def test_cremad_fake_takes_audio_from_the_wav_files(cremad_fake, tmp_path, monkeypatch):
    data = cremad_module(cremad_fake)
    assert data.num_classes == 6 and data.input_shapes["audio"] == [1, 32, 64]
    data.setup("fit")
    records = data.datasets["train"].records
    assert [r.label for r in records] == [0, 1, 5]
    assert all(r.path.suffix == ".flv" and r.audio_path.suffix == ".wav" for r in records)
    check_batch(data, first_batch(data, "train"), "train")
    # The FLV's own track is one tone for every class; the WAVs differ by class, so audio must too.
    test = eval_tensors(data, "val")
    assert not torch.allclose(test[0]["audio"], test[2]["audio"])
    assert_cache_matches_decoding(lambda **kw: cremad_module(cremad_fake, **kw), tmp_path, monkeypatch, ClipSettings)


def test_validation_can_be_held_out_of_train_per_class(ks_fake):
    data = ks_module(ks_fake, val_fraction=0.5, seed=3)
    data.setup("fit")
    train, val = data.datasets["train"].records, data.datasets["val"].records
    assert sorted(r.label for r in val) == list(KS_LABELS) and len(train) == 3
    assert {r.key for r in train}.isdisjoint(r.key for r in val)
    again = ks_module(ks_fake, val_fraction=0.5, seed=3)
    again.setup("fit")
    assert [r.key for r in again.datasets["val"].records] == [r.key for r in val]


# ---------------------------------------------------------------- the cache
def test_interrupted_prepare_resumes_without_redoing_cached_clips(ks_fake, tmp_path, monkeypatch):
    data = ks_module(ks_fake, cache_dir=str(tmp_path / "cache"))
    calls: list[str] = []
    extract = ClipSettings.extract

    def counting(self, record):
        if len(calls) == 4 and interrupt:
            raise KeyboardInterrupt
        calls.append(record.key)
        return extract(self, record)

    monkeypatch.setattr(ClipSettings, "extract", counting)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        data.prepare_cache(workers=0, progress=False)
    done = {key: data.cache.clip_file(key).stat().st_mtime_ns for key in calls}
    assert len(done) == 4 and all(data.cache.has(key) for key in done)
    leftover = data.cache.clip_file(calls[0]).with_name("tmpabc.npz.partial")  # as a killed worker leaves it
    leftover.write_bytes(b"half a file")

    interrupt, calls[:] = False, []
    report = data.prepare_cache(workers=0, progress=False)
    assert (report.total, report.already_cached, report.written, report.failed) == (9, 4, 5, {})
    assert len(calls) == 5 and set(calls).isdisjoint(done)
    assert {key: data.cache.clip_file(key).stat().st_mtime_ns for key in done} == done
    assert not leftover.exists()

    monkeypatch.setattr(ClipSettings, "extract", extract)
    for key in list(done)[:2]:
        data.cache.clip_file(key).unlink()
    report = data.prepare_cache(workers=2, progress=False)  # worker processes resume the same way
    assert (report.already_cached, report.written) == (7, 2)


def test_cache_folder_depends_on_the_preprocessing_settings_only(ks_fake, tmp_path):
    base = ks_module(ks_fake, cache_dir=str(tmp_path))
    assert ks_module(ks_fake, cache_dir=str(tmp_path), audio_mean=0.0, augment=True).cache.folder == base.cache.folder
    assert ks_module(ks_fake, cache_dir=str(tmp_path), frame_size=48).cache.folder != base.cache.folder
    assert ks_module(ks_fake, cache_dir=str(tmp_path), fps=2.0).cache.folder != base.cache.folder
    assert ks_module(ks_fake, cache_dir=str(tmp_path), fps=1).cache.folder == base.cache.folder
    with pytest.raises(ValueError, match="cannot name a cache file"):
        base.cache.clip_file("../escape")


def test_corrupted_cache_files_are_not_counted_as_cached_and_prepare_decodes_them_again(ks_fake, tmp_path):
    umask = os.umask(0o027)  # a shared cache: group-readable, not world-readable
    try:
        data = ks_module(ks_fake, cache_dir=str(tmp_path / "cache"))
        data.prepare_cache(workers=0, progress=False)
    finally:
        os.umask(umask)
    data.setup("test")
    dataset = data.datasets["test"]
    keys = [record.key for record in dataset.records[:3]]
    files = [data.cache.clip_file(key) for key in keys]
    assert {stat.S_IMODE(path.stat().st_mode) for path in data.cache.folder.rglob("*") if path.is_file()} == {0o640}
    good = [path.read_bytes() for path in files]
    expected = [dataset[i] for i in range(3)]

    files[0].write_bytes(good[0][: len(good[0]) // 2])  # truncated
    files[1].write_bytes(b"")  # emptied
    flipped = bytearray(good[2])
    flipped[len(flipped) // 2] ^= 0x10  # one bit inside the frames' bytes
    files[2].write_bytes(bytes(flipped))

    assert not data.cache.has(keys[0]) and not data.cache.has(keys[1]), "setup must not count them as cached"
    assert data.cache.verify(keys[2]).startswith("CRC-32 check failed")
    with pytest.warns(UserWarning, match=rf"{keys[2]}\.npz: unreadable cache file \(Bad CRC-32"):
        reread = dataset[2]
    for i, sample in enumerate([dataset[0], dataset[1], reread]):  # decoded from the media instead: the same tensors
        assert all(torch.equal(sample[name], expected[i][name]) for name in expected[i]), keys[i]

    report = data.prepare_cache(workers=0, progress=False)
    assert sorted(report.corrupted) == sorted(keys) and report.written == 3 and report.failed == {}
    assert "3 of them to replace corrupted cache files" in report.summary()
    assert [path.read_bytes() for path in files] == good, "decoded again byte for byte"


def flip_bit_in_member(path: Path, member: str) -> None:
    """Flip one bit in the middle of the stored bytes of zip member ``member`` of ``path``."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local file header
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_cached_sample_reads_only_the_frames_it_uses(ks_fake, tmp_path):
    """Frames are stored one member per step; a sample reads (and CRC-checks) only the steps it takes."""
    data = ks_module(ks_fake, cache_dir=str(tmp_path / "cache"), fps=4.0, augment=True)
    data.prepare_cache(workers=0, progress=False)
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    path = data.cache.clip_file(val.records[0].key)
    with zipfile.ZipFile(path) as archive:
        members = archive.namelist()
    assert sorted(members) == ["fbank.npy", *(f"frames/{step:05d}.npy" for step in range(6))]  # 1.5 s at 4 fps
    expected = val[0]  # evaluation takes the centres of 3 segments of 6 steps: steps 1, 3 and 5

    flip_bit_in_member(path, "frames/00002.npy")
    assert data.cache.verify(val.records[0].key) == "CRC-32 check failed for frames/00002.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the damaged step is never read
        assert all(torch.equal(value, expected[name]) for name, value in val[0].items())

    flip_bit_in_member(path, "frames/00003.npy")
    with pytest.warns(UserWarning, match=r"Bad CRC-32 for file 'frames/00003\.npy'"):
        reread = val[0]
    assert all(torch.equal(value, expected[name]) for name, value in reread.items()), "decoded from the media"

    key = (2, 1)  # a training sample (epoch 2): its frame and crop draws survive the fallback to decoding
    expected_train = train[key]
    assert "visual_crop" in expected_train
    for member in [f"frames/{step:05d}.npy" for step in range(6)]:
        flip_bit_in_member(data.cache.clip_file(train.records[1].key), member)
    with pytest.warns(UserWarning, match="Bad CRC-32"):
        reread = train[key]
    assert all(torch.equal(value, expected_train[name]) for name, value in reread.items())


def test_cache_files_of_the_first_layout_still_read(ks_fake, tmp_path):
    """A file holding the frames as one array (as caches were first written) gives the same samples."""
    data = ks_module(ks_fake, cache_dir=str(tmp_path / "cache"), fps=4.0)
    data.prepare_cache(workers=0, progress=False)
    data.setup("test")
    dataset = data.datasets["test"]
    expected = [dataset[i] for i in range(len(dataset))]
    for record in dataset.records:
        data.cache.write(record.key, data.settings.extract(record))  # no stepwise arrays: one "frames" member
        with zipfile.ZipFile(data.cache.clip_file(record.key)) as archive:
            assert archive.namelist() == ["frames.npy", "fbank.npy"]
    for i, sample in enumerate(expected):
        assert all(torch.equal(value, sample[name]) for name, value in dataset[i].items())


def test_prepare_command_reads_the_data_config_and_training_then_reads_the_cache(ks_fake, tmp_path, capsys, monkeypatch):
    config = tmp_path / "ks.yaml"
    init_args = {
        **TINY_LOADER,
        "root": "/nonexistent",
        "train_list": str(ks_fake["train"]),
        "test_list": str(ks_fake["test"]),
        "cache_dir": str(tmp_path / "cache"),
        "clip": {**TINY_AUDIO, "fps": 2.0},
    }
    config.write_text(
        yaml.safe_dump({"data": {"class_path": "data_modules.KineticsSoundsDataModule", "init_args": init_args}})
    )
    arguments = ["ks", "--config", str(config), "--root", str(ks_fake["root"]), "--workers", "2", "--no-progress"]
    code = prepare_main([*arguments, "--set", "clip.fps=1"])
    assert code == 0
    output = capsys.readouterr().out
    assert "9 clips: 0 were cached already, 9 decoded now, 0 failed" in output

    clip = ClipSettings(**{**TINY_AUDIO, "fps": 1.0})  # the --set override, merged into the config's clip
    data = KineticsSoundsDataModule(**{**init_args, "root": str(ks_fake["root"]), "clip": clip})
    monkeypatch.setattr(ClipSettings, "extract", lambda self, record: pytest.fail("decoded despite the cache"))
    data.setup("fit")
    check_batch(data, first_batch(data, "train"), "train")

    with pytest.raises(ValueError, match="expected data_modules.UCF101DataModule"):
        prepare_main(["ucf101", "--config", str(config)])
    with pytest.raises(ValueError, match="ks data settings: .*'fps'"):
        prepare_main([*arguments, "--set", "fps=1"])


def test_prepare_reads_the_shipped_data_config_by_default():
    shipped = yaml.safe_load((REPO / "experiments" / "data" / "cremad.yaml").read_text())["data"]["init_args"]
    assert data_arguments("cremad", None) == shipped


# ---------------------------------------------------------------- broken clips
BROKEN = {
    "truncated": "Invalid data found",
    "zero_bytes": "empty file (0 bytes)",
    "audio_only": "no video stream",
    "video_only": "no audio stream",
    "not_a_video": "Invalid data found",
    "missing": "no media file named",
    "two_ms_of_audio": "the filterbank needs at least 400",
}
USABLE = ("very_short", "stereo_44k")


@pytest.fixture(scope="module")
def broken_ks(tmp_path_factory) -> dict[str, Path]:
    """A Kinetics-Sounds folder of 4 good clips, the broken clips of ``BROKEN`` and two odd but usable
    ones: 0.3 s long, and 44.1 kHz stereo audio."""
    root = tmp_path_factory.mktemp("broken")
    media = root / "media"
    media.mkdir()
    lines = []

    def clip(name: str, label: int, extension: str = ".mp4") -> Path:
        lines.append(f"{name} {label}")
        return media / f"{name}{extension}"

    for index in range(4):
        label = KS_LABELS[index % 2]
        write_video(clip(f"good_{index}", label), frames(label, SECONDS, FPS, SIZE, index), tone(label, SECONDS, 16000))
    good = (media / "good_0.mp4").read_bytes()
    clip("truncated", 0).write_bytes(good[: len(good) // 2])
    clip("zero_bytes", 0).write_bytes(b"")
    write_mp4(clip("audio_only", 0), video=None, audio=tone(0, SECONDS, 16000), audio_rate=16000)
    write_mp4(clip("video_only", 0), video=frames(0, SECONDS, FPS, SIZE), audio=None, fps=FPS)
    clip("not_a_video", 0).write_text("this is a text file, not a video\n" * 20)
    clip("missing", 0)
    write_video(
        clip("two_ms_of_audio", 0, ".avi"), frames(0, SECONDS, FPS, SIZE), tone(0, 0.002, 16000)
    )  # PCM: exact length
    write_video(clip("very_short", 7), frames(7, 0.3, FPS, SIZE), tone(7, 0.3, 16000))
    write_video(
        clip("stereo_44k", 7), frames(7, SECONDS, FPS, SIZE), tone(7, SECONDS, 44100, channels=2), audio_rate=44100
    )
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    write_video(media / "test_0.mp4", frames(0, SECONDS, FPS, SIZE), tone(0, SECONDS, 16000))
    (root / "test.txt").write_text("test_0 0\n")
    return {"root": media, "train": root / "train.txt", "test": root / "test.txt"}


def test_broken_clips_fail_setup_with_one_error_listing_them(broken_ks):
    data = ks_module(broken_ks)
    with pytest.raises(ClipDecodeError) as error:
        data.setup("fit")
    message = str(error.value)
    assert "6 of 13 clips in the 'train' split" in message and "on_bad_clip='skip'" in message
    assert "truncated.mp4" in message and "zero_bytes.mp4 (empty file (0 bytes))" in message
    assert "and 1 more" in message


def test_broken_clips_are_reported_clip_by_clip_and_the_rest_trains(broken_ks, tmp_path):
    data = ks_module(broken_ks, on_bad_clip="skip", cache_dir=str(tmp_path / "cache"), batch_size=8)
    report = data.prepare_cache(workers=2, progress=False)
    assert set(report.failed) == set(BROKEN) and report.written == report.total - len(BROKEN) == 7
    for name, expected in BROKEN.items():
        assert expected in report.failed[name][1], (name, report.failed[name])
    summary = report.summary()
    assert all(f"failed {name}:" in summary for name in BROKEN)
    assert json.loads((data.cache.folder / "failures.json").read_text()).keys() == BROKEN.keys()

    with pytest.warns(UserWarning, match="7 of 13 clips in the 'train' split"):
        data.setup("fit")
    assert sorted(Path(path).stem for path, _ in data.skipped_clips) == sorted(BROKEN)
    kept = {r.key: i for i, r in enumerate(data.datasets["train"].records)}
    assert set(kept) == {"good_0", "good_1", "good_2", "good_3", *USABLE}

    data.datasets["train"].train = False
    short, stereo = (data.datasets["train"][kept[name]] for name in USABLE)
    padding = short["audio"][0, 0, -1]
    assert (short["audio"][0, :, 40:] == padding).all() and (short["audio"][0, :, :25] != padding).any(), (
        "a 0.3 s clip has ~28 fbank frames, then zero padding"
    )
    assert torch.equal(short["visual"][:, 0], short["visual"][:, 2]), "one frame at 1 fps, repeated"
    peak_short = short["audio"][0, :, 5:20].mean(1).argmax()
    peak_stereo = stereo["audio"][0, :, 5:60].mean(1).argmax()
    assert peak_stereo == peak_short, "44.1 kHz stereo is resampled to 16 kHz mono: same tone, same mel bin"
    data.datasets["train"].train = True

    from crmt.strategies import JointTraining

    seed_everything(0)
    model = JointTraining(num_classes=data.num_classes, input_shapes=data.input_shapes, encoder_width=4)
    trainer = make_trainer(1, tmp_path)
    trainer.fit(model, datamodule=data)
    assert trainer.state.finished and math.isfinite(trainer.callback_metrics["val/loss"].item())


def test_without_a_cache_the_probe_lists_unopenable_clips_and_decoding_drops_the_rest(broken_ks):
    data = ks_module(broken_ks, on_bad_clip="skip")
    with pytest.warns(UserWarning, match="6 of 13 clips"):
        data.setup("test")
        data.setup("fit")
    skipped = {Path(path).stem: reason for path, reason in data.skipped_clips}
    assert set(skipped) == set(BROKEN) - {"two_ms_of_audio"}, "a probe opens files; it does not decode audio"
    with pytest.warns(UserWarning) as caught:
        batches = list(data.train_dataloader())
    messages = [str(warning.message) for warning in caught]
    assert any("two_ms_of_audio.avi: waveform has 32 samples" in m for m in messages)
    assert any("dropped 1 of" in m for m in messages)
    assert sum(batch["label"].shape[0] for batch in batches) == len(data.datasets["train"]) - 1
