"""Experiments and data configs: how they compose (``crmt.experiments``, ``make train``, the CLI's default
data), that a data config switching class starts from that class's own defaults, the paper's setup at
real-dataset scale; every shipped experiment trains through its whole schedule via the CLI (tiny data)
to the accuracy a forward pass measures; the default ones reach their documented quality (slow: ~30 s each)."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from crmt.cli import main
from crmt.robustness.smoothing import max_certified_radius
from crmt.experiments import config_files, default_scale
from data_modules import (
    ClipDataModule,
    ClipSettings,
    CremadDataModule,
    KineticsSoundsDataModule,
    RgbFlowSettings,
    UCF101DataModule,
    VGGSoundDataModule,
)
from helpers import TINY_SMOOTHING, TINY_SMOOTHING_ARGS

REPO = Path(__file__).resolve().parents[1]
CHANCE = 1 / 6  # the embedded dataset's default 6 classes


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedded")


TINY_DATA = [
    "--data.init_args.num_classes=3", "--data.init_args.train_per_class=3", "--data.init_args.val_per_class=1",
    "--data.init_args.test_per_class=1", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
]
TWO_STEPS = ["--model.init_args.step1_epochs=1", "--model.init_args.step2_epochs=1"]
STEP1_ONLY = ["--model.init_args.step1_epochs=2"]
SCHEDULES = {
    "jt": ["--trainer.max_epochs=2"],
    "jt_noise": ["--trainer.max_epochs=2"],
    "ojt": STEP1_ONLY,
    "gb": ["--trainer.max_epochs=3", "--model.init_args.super_epoch=2"],
    "ogm": ["--trainer.max_epochs=2"],
    "pmr": ["--trainer.max_epochs=2"],
    "msefm": [*TWO_STEPS, "--model.init_args.memory_size=8", "--model.init_args.ista_iterations=5"],
    "mmat": ["--trainer.max_epochs=2", "--model.init_args.at_steps=2"],
    "mixup": ["--trainer.max_epochs=2"],
    "crmt_jt": TWO_STEPS,
    "crmt_jt_noise": TWO_STEPS,
    "crmt_at": [*TWO_STEPS, "--model.init_args.at_steps=2"],
    "crmt_mix": TWO_STEPS,
    "crmt_step1": STEP1_ONLY,
    "crmt_step2": TWO_STEPS,
    "mmt": ["--trainer.max_epochs=2"],
    "crmt_mmt": STEP1_ONLY,
}
"""Per embedded experiment: overrides that keep every phase of its schedule but make it short."""
TRANSFORMERS = {"mmt", "crmt_mmt"}


def test_schedules_cover_every_embedded_experiment():
    assert {p.stem for p in (REPO / "experiments").glob("*.yaml")} - {"defaults"} == set(SCHEDULES)


def forward_accuracy(model, data) -> float:
    """The test accuracy of ``model``'s final weights, counted from a forward pass over the test split."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in map(data.normalize, data.test_dataloader()):
            predictions = model(model.inputs(batch)).logits.argmax(dim=1)
            correct += int((predictions == batch["label"]).sum())
            total += len(batch["label"])
    return correct / total


@pytest.mark.parametrize("experiment", sorted(SCHEDULES))
def test_every_strategy_fits_through_its_schedule_via_the_cli(experiment, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["crmt"])
    width = [] if experiment in TRANSFORMERS else ["--model.init_args.encoder_width=4"]
    cli = main(
        [
            "fit", "--config", str(REPO / "experiments" / f"{experiment}.yaml"), f"--data.init_args.root={data_root}",
            *TINY_DATA, *width, *SCHEDULES[experiment], "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
            *TINY_SMOOTHING_ARGS,
        ]
    )
    trainer, model = cli.trainer, cli.model
    assert trainer.current_epoch == trainer.max_epochs and not trainer.interrupted
    assert trainer.callback_metrics["test/acc"].item() == pytest.approx(forward_accuracy(model, cli.datamodule))
    if "--model.init_args.step2_epochs=1" in SCHEDULES[experiment]:
        assert int(model.phase) == 2, "the run reached its second phase"
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(report["accuracy"]) >= {"clean", "fgm", "pgd", "missing_audio"}
    assert report["smoothed"]["multimodal"]["certified"] == TINY_SMOOTHING["samples"], "the report smoothed, cheaply"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["jt", "crmt_jt"])
def test_default_experiment_is_far_above_chance(experiment, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["crmt"])
    cli = main(
        [
            "fit",
            "--config",
            str(REPO / "experiments" / f"{experiment}.yaml"),
            f"--data.init_args.root={data_root}",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            *TINY_SMOOTHING_ARGS,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert metrics["test/acc"].item() >= 4 * CHANCE, metrics
    if experiment == "crmt_jt":
        assert int(cli.model.phase) == 2
        assert metrics["test/certified_radius"].item() > 0.0, metrics


# ---------------------------------------------------------------- composition
EXPERIMENTS = REPO / "experiments"
REAL_DATASETS = ("ks", "vggsound", "ucf101", "cremad")


def composed_config(config_paths: list[Path], monkeypatch, capsys) -> dict:
    """The configuration ``python -m crmt fit --config ...`` composes (defaults.yaml first), as printed."""
    monkeypatch.setattr(sys, "argv", ["crmt"])
    arguments = [argument for path in config_paths for argument in ("--config", str(path))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *arguments, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_a_run_reads_the_experiment_then_the_scale_then_the_data():
    assert config_files("crmt_at", "ks") == [
        EXPERIMENTS / "crmt_at.yaml",
        EXPERIMENTS / "scale" / "paper.yaml",
        EXPERIMENTS / "scale" / "paper" / "crmt_at.yaml",
        EXPERIMENTS / "data" / "ks.yaml",
    ]
    assert config_files("crmt_at") == [EXPERIMENTS / "crmt_at.yaml"], "no DATA: the embedded default, unchanged"
    assert config_files("jt", "embedded_misleading") == [EXPERIMENTS / "jt.yaml", EXPERIMENTS / "data" / "embedded_misleading.yaml"]
    assert config_files("jt", "manifest") == [EXPERIMENTS / "jt.yaml", EXPERIMENTS / "data" / "manifest.yaml"]
    assert config_files("jt", "ks", scale=None) == [EXPERIMENTS / "jt.yaml", EXPERIMENTS / "data" / "ks.yaml"]
    assert [default_scale(name) for name in (None, "embedded", "embedded_misleading", "manifest", "ks", "my_clips")] == [
        None, None, None, None, "paper", "paper",
    ]
    with pytest.raises(FileNotFoundError, match=r"'mmt' has no paper-scale schedule: No published setting.*SCALE="):
        config_files("mmt", "ucf101")  # refused: experiments/scale/paper/mmt.refused (tests/test_paper_scale.py)
    with pytest.raises(FileNotFoundError, match=r"data 'kinetics'.*data configs: cremad, embedded, embedded_balanced, embedded_misleading, ks"):
        config_files("jt", "kinetics")


def test_an_encoder_overlay_comes_after_the_schedule_and_before_the_data():
    assert config_files("crmt_jt", "ks", encoder="lipschitz") == [
        EXPERIMENTS / "crmt_jt.yaml",
        EXPERIMENTS / "scale" / "paper.yaml",
        EXPERIMENTS / "scale" / "paper" / "crmt_jt.yaml",
        EXPERIMENTS / "encoders" / "lipschitz.yaml",
        EXPERIMENTS / "data" / "ks.yaml",
    ]
    assert config_files("jt", encoder="lipschitz") == [EXPERIMENTS / "jt.yaml", EXPERIMENTS / "encoders" / "lipschitz.yaml"]
    with pytest.raises(FileNotFoundError, match=r"encoder 'orthogonal'.*encoders: lipschitz"):
        config_files("jt", encoder="orthogonal")


@pytest.mark.parametrize("experiment", ["jt", "crmt_jt", "crmt_at", "ogm", "pmr", "gb", "mixup", "mmat", "crmt_mix"])
def test_every_strategy_with_encoders_takes_the_lipschitz_overlay(experiment, monkeypatch, capsys):
    config = composed_config(config_files(experiment, encoder="lipschitz"), monkeypatch, capsys)
    assert config["model"]["init_args"]["encoder"] == "lipschitz"
    assert config["model"]["init_args"]["encoder_width"] == 8, "the experiment's own settings are kept"
    assert config["report"]["settings"]["sound_certificate"] and config["report"]["settings"]["audit_sound"]


def test_model_settings_and_data_settings_live_in_separate_files():
    model_files = [p for p in EXPERIMENTS.glob("*.yaml") if p.stem != "defaults"] + list(EXPERIMENTS.glob("scale/**/*.yaml"))
    for path in [EXPERIMENTS / "defaults.yaml", *model_files]:
        assert "data" not in yaml.safe_load(path.read_text()), f"{path} sets data; data belongs in experiments/data/"
    for path in EXPERIMENTS.glob("data/*.yaml"):
        assert set(yaml.safe_load(path.read_text())) == {"data"}, f"{path} must hold only the data section"


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / "bin" / "python").is_file(), reason="needs make and .venv")
def test_make_train_passes_the_composed_configs_and_nothing_else_without_data():
    def planned(*variables: str) -> str:
        lines = subprocess.run(["make", "-n", "train", *variables], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return next(line for line in lines.splitlines() if " -m crmt fit " in line).split(" -m crmt fit ")[1].strip()

    assert planned("EXP=crmt_at") == "--config experiments/crmt_at.yaml"
    expected = " ".join(f"--config {path.relative_to(REPO)}" for path in config_files("crmt_at", "ks"))
    assert planned("EXP=crmt_at", "DATA=ks") == expected
    assert planned("EXP=crmt_at", "DATA=ks", "SCALE=") == "--config experiments/crmt_at.yaml --config experiments/data/ks.yaml"
    assert planned("EXP=crmt_jt", "ENCODER=lipschitz") == "--config experiments/crmt_jt.yaml --config experiments/encoders/lipschitz.yaml"


def test_the_embedded_default_is_todays_data_module(monkeypatch, capsys):
    """Without a data config a run reads experiments/data/embedded.yaml: the embedded module with the
    clip settings every embedded result was measured with."""
    data = composed_config([EXPERIMENTS / "jt.yaml"], monkeypatch, capsys)["data"]
    assert data["class_path"] == "data_modules.EmbeddedAVDataModule"
    assert data["init_args"]["root"] == "data/embedded" and data["init_args"]["fps"] == 12
    assert data["init_args"]["clip"] == {
        "sample_rate": 16000, "num_mel_bins": 128, "audio_frames": 100, "audio_mean": -1.97, "audio_std": 3.62,
        "audio_std_factor": 1.0, "fps": None, "num_frames": 3, "frame_size": 48,
        "visual_mean": [0.485, 0.456, 0.406], "visual_std": [0.229, 0.224, 0.225], "augment": False,
    }


def declared_default(cls: type, name: str) -> object:
    """The default of ``name`` in the ``__init__`` signature that declares it, along ``cls``'s MRO."""
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise AssertionError(f"{cls.__name__} declares no default for {name}")


def as_yaml_value(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("data", "cls", "settings"),
    [
        ("manifest", ClipDataModule, ClipSettings),
        ("ks", KineticsSoundsDataModule, ClipSettings),
        ("vggsound", VGGSoundDataModule, ClipSettings),
        ("cremad", CremadDataModule, ClipSettings),
        ("ucf101", UCF101DataModule, RgbFlowSettings),
    ],
)
def test_a_data_config_that_switches_class_starts_from_that_class_defaults(data, cls, settings, monkeypatch, capsys):
    """Nothing of the embedded module (fps 12, audio_mean -1.97, 48 x 48 frames, ...) or of the defaults carries
    over: every clip setting is the settings dataclass's own default, every other argument the config's value
    or the class's own default."""
    path = EXPERIMENTS / "data" / f"{data}.yaml"
    given = yaml.safe_load(path.read_text())["data"]["init_args"]
    composed = composed_config(config_files("jt", data, scale=None), monkeypatch, capsys)["data"]
    assert composed["class_path"] == f"data_modules.{cls.__name__}"
    clip = {field.name: as_yaml_value(field.default) for field in fields(settings)}
    assert composed["init_args"].pop("clip") == clip
    expected = {
        name: given[name] if name in given else as_yaml_value(declared_default(cls, name)) for name in composed["init_args"]
    }
    assert composed["init_args"] == expected


@pytest.mark.parametrize("strategy", ["jt", "crmt_jt", "crmt_at"])
def test_a_real_dataset_runs_the_papers_setup(strategy, monkeypatch, capsys):
    """ResNet18 width 64, SGD (1e-3, 0.9, 1e-4), StepLR(60, 0.1), seed 2024, the paper's budgets and epochs."""
    config = composed_config(config_files(strategy, "ks"), monkeypatch, capsys)
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == yaml.safe_load((EXPERIMENTS / f"{strategy}.yaml").read_text())["model"]["class_path"]
    assert config["seed_everything"] == 2024 and model["encoder_width"] == 64
    assert config["data"]["class_path"] == "data_modules.KineticsSoundsDataModule" and config["data"]["init_args"]["batch_size"] == 64
    step1 = model["optimizer"]
    assert step1["class_path"] == "torch.optim.SGD"
    assert {k: step1["init_args"][k] for k in ("lr", "momentum", "weight_decay")} == {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}
    assert model["lr_scheduler"] == {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 60, "gamma": 0.1, "last_epoch": -1}}
    for name in ("monitor", "report"):
        budgets = {k: config[name]["settings"][k] for k in ("multimodal_eps", "unimodal_eps")}
        assert budgets == {"multimodal_eps": 0.5, "unimodal_eps": 1.0}, name
    if strategy == "jt":
        assert config["trainer"]["max_epochs"] == 140
        return
    assert (model["rho"], model["step1_epochs"], model["step2_epochs"]) == (2.0, 140, 45)
    step2 = model["step2_optimizer"]
    assert step2["class_path"] == "torch.optim.SGD"
    assert {k: step2["init_args"][k] for k in ("lr", "momentum", "weight_decay")} == {"lr": 3e-5, "momentum": 0.9, "weight_decay": 1e-2}
    if strategy == "crmt_at":
        assert (model["at_eps"], model["at_steps"], model["at_step_fraction"]) == (0.1, 5, 0.2)


def test_the_paper_scale_report_is_affordable_and_the_full_one_is_one_config_away(monkeypatch, capsys):
    """scale/paper.yaml: the medium suite and smoothing of 200 clips with n = 10,000 (R_max above both budgets);
    evaluation/paper_full.yaml changes only those to AutoAttack's standard suite and Cohen et al.'s 500 x 100,000."""
    files = config_files("crmt_jt", "ks")
    default = composed_config(files, monkeypatch, capsys)["report"]["settings"]
    full = composed_config([*files, EXPERIMENTS / "evaluation" / "paper_full.yaml"], monkeypatch, capsys)["report"]["settings"]
    assert (default["adaptive"]["suite"], default["smoothing"]["samples"], default["smoothing"]["n"]) == ("medium", 200, 10_000)
    assert (full["adaptive"]["suite"], full["smoothing"]["samples"], full["smoothing"]["n"]) == ("standard", 500, 100_000)
    assert {k: v for k, v in full["smoothing"].items() if k not in ("samples", "n")} == {
        k: v for k, v in default["smoothing"].items() if k not in ("samples", "n")
    }
    assert max_certified_radius(default["smoothing"]["sigma"], 10_000, default["smoothing"]["alpha"]) > default["unimodal_eps"]
