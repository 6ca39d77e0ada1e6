"""W&B sweep configs: the command the agent builds, with parameters substituted its way, parses and trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from helpers import TINY_SMOOTHING_ARGS

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line ``wandb agent`` runs for one trial (wandb_agent.py's macro substitution)."""
    sweep_vars = create_sweep_command_args({"args": {name: {"value": value} for name, value in values.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[sweep["program"]])
    command = []
    for chunk in map(str, sweep["command"]):
        command += sweep_vars[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def test_sweeps_cover_rho_the_step2_learning_rate_and_the_at_budget():
    parameters = {name for path in SWEEPS for name in yaml.safe_load(path.read_text())["parameters"]}
    assert {"model.init_args.rho", "model.init_args.step2_optimizer.init_args.lr", "model.init_args.at_eps"} <= parameters


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_trial_command_parses_and_starts_training(path, tmp_path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["name"].startswith(("report/", "val/"))
    values = {name: spec["values"][-1] for name, spec in sweep["parameters"].items()}
    command = agent_command(sweep, values)
    assert all(f"--{name}={value}" in command for name, value in values.items())
    tiny = [
        f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.num_classes=3", "--data.init_args.train_per_class=3",
        "--data.init_args.val_per_class=1", "--data.init_args.test_per_class=1", "--data.init_args.num_workers=0",
        "--model.init_args.encoder_width=4", "--model.init_args.step1_epochs=1", "--model.init_args.step2_epochs=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
        *TINY_SMOOTHING_ARGS,
    ]
    env = {key: value for key, value in os.environ.items() if key != "WANDB_MODE"}
    printed = subprocess.run([*command, "--print_config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr[-3000:]
    config = yaml.safe_load(printed.stdout)
    for name, value in values.items():
        node = config
        for key in name.split("."):
            node = node[key]
        assert node == value, (name, node, value)
    trained = subprocess.run([*command, *tiny], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    assert "CRMT phase switch after epoch 0 (step 2 starts at epoch 1)" in trained.stdout + trained.stderr
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*")), "outside an agent the trial logs offline"
