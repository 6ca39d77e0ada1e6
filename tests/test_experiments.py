"""The shipped experiments, run as `make train` runs them, reach their documented quality (slow: ~30 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from crmt.cli import main

REPO = Path(__file__).resolve().parents[1]
CHANCE = 1 / 6  # the embedded dataset's default 6 classes


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedded")


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
