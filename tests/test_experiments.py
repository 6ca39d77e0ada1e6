"""Every shipped experiment trains through its whole schedule via the CLI (tiny data); the default ones
reach their documented quality (slow: ~30 s each)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from crmt.cli import main

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
    "ojt": STEP1_ONLY,
    "gb": ["--trainer.max_epochs=3", "--model.init_args.super_epoch=2"],
    "ogm": ["--trainer.max_epochs=2"],
    "pmr": ["--trainer.max_epochs=2"],
    "msefm": [*TWO_STEPS, "--model.init_args.memory_size=8", "--model.init_args.ista_iterations=5"],
    "mmat": ["--trainer.max_epochs=2", "--model.init_args.at_steps=2"],
    "mixup": ["--trainer.max_epochs=2"],
    "crmt_jt": TWO_STEPS,
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
    embedded = {p.stem for p in (REPO / "experiments").glob("*.yaml")} - {"defaults"}
    embedded = {name for name in embedded if not name.endswith(("_ks", "_vggsound", "_ucf101", "_cremad"))}
    assert embedded == set(SCHEDULES)


@pytest.mark.parametrize("experiment", sorted(SCHEDULES))
def test_every_strategy_fits_through_its_schedule_via_the_cli(experiment, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["crmt"])
    width = [] if experiment in TRANSFORMERS else ["--model.init_args.encoder_width=4"]
    cli = main(
        [
            "fit", "--config", str(REPO / "experiments" / f"{experiment}.yaml"), f"--data.init_args.root={data_root}",
            *TINY_DATA, *width, *SCHEDULES[experiment], "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    trainer, model = cli.trainer, cli.model
    assert trainer.current_epoch == trainer.max_epochs and not trainer.interrupted
    assert 0.0 <= trainer.callback_metrics["test/acc"].item() <= 1.0
    if "--model.init_args.step2_epochs=1" in SCHEDULES[experiment]:
        second_phase = bool(model.memory_ready) if experiment == "msefm" else int(model.phase) == 2
        assert second_phase, "the run reached its second phase"
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(report["accuracy"]) >= {"clean", "fgm", "pgd", "missing_audio"}


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
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert metrics["test/acc"].item() >= 4 * CHANCE, metrics
    if experiment == "crmt_jt":
        assert int(cli.model.phase) == 2
        assert metrics["test/certified_radius"].item() > 0.0, metrics
