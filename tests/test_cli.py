"""The command line, end to end: config parsing, a real CRMT-JT fit through both phases, W&B files, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from crmt.cli import main

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "ks": "data_modules.KineticsSoundsDataModule",
    "vggsound": "data_modules.VGGSoundDataModule",
    "ucf101": "data_modules.UCF101DataModule",
    "cremad": "data_modules.CremadDataModule",
}
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml") if p.stem != "defaults")

TINY_DATA = [
    "--data.init_args.train_per_class=4",
    "--data.init_args.val_per_class=2",
    "--data.init_args.test_per_class=2",
    "--data.init_args.num_classes=4",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=8",
]


def tiny_run_args(tmp_path: Path) -> list[str]:
    return [
        *TINY_DATA,
        f"--data.init_args.root={tmp_path / 'data'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--model.init_args.encoder_width=4",
        "--model.init_args.step1_epochs=1",
        "--model.init_args.step2_epochs=1",
        "--trainer.log_every_n_steps=1",
    ]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "crmt", *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["crmt"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_config_parses(experiment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "experiments" / f"{experiment}.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].startswith("crmt.strategies.")
    dataset = next((name for name in DATASETS if experiment.endswith(f"_{name}")), None)
    expected_data = DATASETS[dataset] if dataset else "data_modules.EmbeddedAVDataModule"
    assert config["data"]["class_path"] == expected_data
    assert config["trainer"]["logger"]["init_args"]["name"] == experiment
    report = next(c for c in config["trainer"]["callbacks"] if c["class_path"] == "crmt.callbacks.RobustnessReport")
    budget = report["init_args"]["settings"]["multimodal_eps"]
    assert budget == (0.5 if dataset else 4.0), "paper budgets on real data, scaled ones on the embedded clips"


def test_crmt_epoch_plan_sets_max_epochs_and_overrides_pass_through(capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(REPO / "experiments" / "crmt_jt.yaml"),
                "--model.rho=1.0",
                "--model.step1_epochs=3",
                "--print_config",
            ]
        )
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["rho"] == 1.0
    assert config["model"]["init_args"]["step1_epochs"] == 3


def wandb_run_dir(save_dir: Path) -> Path:
    runs = sorted((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


ROBUSTNESS_SCALARS = ("robust/acc_pgd", "robust/acc_pgd_audio", "robust/radius_mean", "robust/eta_log_ratio_mean",
                      "report/acc_pgd", "report/acc_missing_visual", "report/audit_violation_rate")


def assert_wandb_holds_robustness_output(run_dir: Path) -> None:
    """The callbacks' scalars are in the run file and their images, tables and histograms among its media."""
    records = next(run_dir.glob("run-*.wandb")).read_bytes()
    for metric in (*ROBUSTNESS_SCALARS, "robust/radius_hist", "report/radius_audio_hist"):
        assert metric.encode() in records, f"{metric} not in the W&B run file {run_dir}"
    media = run_dir / "files" / "media"
    for image in ("robust/eta_ratio_heatmap", "report/accuracy_vs_radius", "report/eta_ratio_heatmap", "report/certified_accuracy"):
        assert list(media.glob(f"images/{image}_*.png")), f"no {image} image in {media}"
    assert list(media.glob("table/report/accuracy_*.table.json")), f"no report table in {media}"


def assert_report_files(folder: Path) -> None:
    for name in ("report.md", "metrics.json", "accuracy_vs_radius.png", "eta_ratio_heatmap.png", "certified_accuracy.png"):
        assert (folder / name).is_file(), f"{name} missing in {folder}"


def test_crmt_jt_fit_end_to_end_through_both_phases(tmp_path):
    """A real `python -m crmt fit`: MP4 generation, decoding, step 1, the switch, step 2, test, W&B files."""
    output = run_cli(["fit", "--config", "experiments/crmt_jt.yaml", *tiny_run_args(tmp_path)], cwd=REPO)
    assert "CRMT phase switch after epoch 0 (step 2 starts at epoch 1)" in output
    assert "test/acc" in output

    run_dir = wandb_run_dir(tmp_path / "runs")
    assert_wandb_holds_robustness_output(run_dir)
    records = next(run_dir.glob("run-*.wandb")).read_bytes()
    for metric in ("train/loss", "train/margin", "train/step2_bound", "train/phase", "val/acc", "val/certified_radius", "test/acc"):
        assert metric.encode() in records, f"{metric} not in the W&B run file {run_dir}"
    report = tmp_path / "runs" / "crmt" / run_dir.name.split("-")[-1] / "report"
    assert_report_files(report)
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["name"] == "crmt_jt" and 0 <= metrics["accuracy"]["pgd"] <= metrics["accuracy"]["clean"] <= 1
    assert "| crmt_jt |" in (report / "report.md").read_text()
    assert "# Robustness report: crmt_jt" in output, "the report is printed at the end of the run"

    checkpoints = list((tmp_path / "runs").rglob("last.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    state = torch.load(checkpoints[0], weights_only=False)["state_dict"]
    assert int(state["phase"]) == 2
    assert (state["tau"] > 0).all()

    # `test` and `validate` from the checkpoint restore step 2: the certified radius (step 2 only) is reported
    for subcommand, stage in (("test", "test"), ("validate", "val")):
        cli = main(
            [subcommand, "--config", "experiments/crmt_jt.yaml", *tiny_run_args(tmp_path), "--trainer.logger=false",
             f"--ckpt_path={checkpoints[0]}"]
        )
        assert int(cli.model.phase) == 2 and torch.equal(cli.model.tau, state["tau"])
        assert cli.trainer.callback_metrics[f"{stage}/certified_radius"].item() > 0
    # the `test` subcommand on a checkpoint (what `make eval` runs) wrote the report into the run folder
    assert_report_files(tmp_path / "runs" / "report")


def test_ddp_two_processes_share_tau_and_integration_weights(tmp_path):
    """`--trainer.strategy ddp --trainer.devices 2` on CPU (gloo): both ranks end identical, step 2 saw all samples."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "scripts" / "fit_and_dump_state.py"),
            "fit",
            "--config",
            "experiments/crmt_jt.yaml",
            *tiny_run_args(tmp_path),
            "--trainer.accelerator=cpu",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
        ],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "offline", "CRMT_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    rank0, rank1 = (torch.load(state_dir / f"rank{r}.pt") for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["phase"] == rank1["phase"] == 2
    assert torch.equal(rank0["tau"], rank1["tau"]) and (rank0["tau"] > 0).all()
    assert torch.equal(rank0["integration"], rank1["integration"])
    assert not torch.allclose(rank0["integration"], torch.ones_like(rank0["integration"]))
    assert rank0["cached_samples"] == rank1["cached_samples"] == rank0["train_samples"]
    differing = [name for name, value in rank0["state_dict"].items() if not torch.equal(value, rank1["state_dict"][name])]
    assert differing == [], f"ranks ended with different parameters or buffers: {differing}"
    assert_wandb_holds_robustness_output(wandb_run_dir(tmp_path / "runs"))
