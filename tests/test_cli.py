"""The command line, end to end: config parsing, a real CRMT-JT fit through both phases, W&B files, DDP."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from wandb.proto import wandb_internal_pb2

from crmt.cli import main
from crmt.robustness.smoothing import evenly_spaced
from crmt.strategies import CRMTJointTraining
from helpers import TINY_SMOOTHING, TINY_SMOOTHING_ARGS, subprocess_environment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml") if p.stem != "defaults")

TINY_DATA = [
    "--data.init_args.train_per_class=4",
    "--data.init_args.val_per_class=2",
    "--data.init_args.test_per_class=2",
    "--data.init_args.num_classes=4",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=8",
    # the balanced geometry (embedded_balanced): these runs test mechanics, and a width-4 model trained for an
    # epoch on 16 clips of the default data (vision the weaker modality) certifies no clip at all
    "--data.init_args.visual_jitter=0.7",
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
        *TINY_SMOOTHING_ARGS,
    ]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "crmt", *args],
        cwd=cwd,
        env=subprocess_environment(**(env or {})),
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
    assert config["data"]["class_path"] == "data_modules.EmbeddedAVDataModule", "the embedded data by default"
    assert config["trainer"]["logger"]["init_args"]["name"] == experiment
    assert config["report"]["settings"]["multimodal_eps"] == 4.0, "budgets scaled to the embedded clips"


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


TINY_VAL_SAMPLES = 8
"""val_per_class x num_classes of TINY_DATA: fewer than the monitor's 32 clips, so it sees the whole split."""
WANDB_BLOCK = 32768


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows (one per ``log`` call) read back from the offline run file ``run-*.wandb``.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each a 7-byte header
    (CRC-32, length, type: 1 full, 2 first, 3 middle, 4 last) and bytes of a serialised
    ``wandb_internal_pb2.Record``. A nested value (histogram, media) gives one key per field, joined by "/".
    """
    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    rows, position, pending = [], 7, b""
    while position + 7 <= len(data):
        room = WANDB_BLOCK - position % WANDB_BLOCK
        if room < 7:  # a block tail too short for a chunk header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zeros past the last record written
            break
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in items})
    return rows


def only_row_with(rows: list[dict], key: str) -> dict:
    (row,) = [row for row in rows if key in row]
    return row


def assert_wandb_holds_robustness_output(run_dir: Path, metrics: dict) -> None:
    """The run file holds the report's numbers as metrics.json has them, the test loop's accuracy equals the
    report's clean accuracy, the monitor's clean accuracy equals val/acc of its epoch, the radius histograms
    count every sample, and the images and tables are among the run's media."""
    rows = wandb_history(run_dir)
    report = only_row_with(rows, "report/acc_clean")
    for attack, accuracy in metrics["accuracy"].items():
        assert report[f"report/acc_{attack}"] == accuracy, attack
    for scope in ("multimodal", *metrics["modalities"]):
        suffix = "" if scope == "multimodal" else f"_{scope}"
        assert report[f"report/radius_mean{suffix}"] == metrics["certified"][scope]["mean"], scope
        assert report[f"report/radius_median{suffix}"] == metrics["certified"][scope]["median"], scope
        smoothed = metrics["smoothed"][scope]  # defaults.yaml smooths the test clips
        assert report[f"report/smoothed_acc_at_budget{suffix}"] == smoothed["accuracy_at_budget"], scope
        assert report[f"report/smoothed_abstention{suffix}"] == smoothed["abstention_rate"], scope
        assert report[f"report/smoothed_max_radius{suffix}"] == smoothed["max_radius"], scope
    assert report["report/eta_log_ratio_mean"] == metrics["eta_ratio"]["mean_log_ratio"]
    if metrics["audit"]["eligible"]:  # a rate only over clips with a positive radius (a tiny model may have none)
        assert report["report/audit_violation_rate"] == metrics["audit"]["violation_rate"]
    else:
        assert "report/audit_violation_rate" not in report
    assert only_row_with(rows, "test/acc")["test/acc"] == pytest.approx(metrics["accuracy"]["clean"], abs=1e-6)
    for suffix in ("", *(f"_{modality}" for modality in metrics["modalities"])):
        counts = f"report/radius{suffix}_hist/values"
        assert sum(only_row_with(rows, counts)[counts]) == metrics["samples"], counts

    monitored = [row for row in rows if "robust/acc_clean" in row]
    assert monitored, "the monitor logged nothing"
    for row in monitored:
        assert row["robust/acc_clean"] == pytest.approx(row["val/acc"], abs=1e-6), row["epoch"]
    histograms = [row["robust/radius_hist/values"] for row in rows if "robust/radius_hist/values" in row]
    assert histograms and all(sum(counts) == TINY_VAL_SAMPLES for counts in histograms), histograms

    media = run_dir / "files" / "media"
    for image in ("robust/eta_ratio_heatmap", "report/accuracy_vs_radius", "report/eta_ratio_heatmap", "report/certified_accuracy"):
        assert list(media.glob(f"images/{image}_*.png")), f"no {image} image in {media}"
    assert list(media.glob("table/report/accuracy_*.table.json")), f"no report table in {media}"


def report_folder(save_dir: Path, run_dir: Path) -> Path:
    """The report folder of the run whose W&B folder is ``run_dir``."""
    return save_dir / "crmt" / run_dir.name.split("-")[-1] / "report"


def assert_report_files(folder: Path) -> None:
    for name in ("report.md", "metrics.json", "accuracy_vs_radius.png", "eta_ratio_heatmap.png", "certified_accuracy.png"):
        assert (folder / name).is_file(), f"{name} missing in {folder}"


def assert_wandb_holds_both_phases(rows: list[dict], rho: float) -> None:
    """Step 1's rows (epoch 0) have loss = CE + rho * L1; step 2's bound is logged in epoch 1 only; train/phase is 1 then 2; in step 2, val/acc and val/certified_radius (full
    forward passes) equal val/step2_acc and val/step2_radius (the cached scores) of the same epoch."""
    step1 = [row for row in rows if "train/margin" in row]
    assert step1 and all(row["epoch"] == 0 for row in step1)
    for row in step1:
        assert row["train/loss"] == pytest.approx(row["train/ce"] + rho * row["train/margin"], rel=1e-5)
    step2 = [row for row in rows if "train/step2_bound" in row]
    assert step2 and all(row["epoch"] == 1 for row in step2)
    assert [(row["epoch"], row["train/phase"]) for row in rows if "train/phase" in row] == [(0, 1), (1, 2)]
    validation = only_row_with(rows, "val/certified_radius")
    selection = only_row_with(rows, "val/step2_radius")
    assert validation["epoch"] == selection["epoch"] == 1
    assert validation["val/acc"] == pytest.approx(selection["val/step2_acc"], abs=1e-6)
    assert validation["val/certified_radius"] == pytest.approx(selection["val/step2_radius"], rel=1e-5)


def test_crmt_jt_fit_end_to_end_through_both_phases(tmp_path):
    """A real `python -m crmt fit`: MP4 generation, decoding, step 1, the switch, step 2, test, W&B files."""
    output = run_cli(["fit", "--config", "experiments/crmt_jt.yaml", *tiny_run_args(tmp_path)], cwd=REPO)
    assert "CRMT phase switch after epoch 0 (step 2 starts at epoch 1)" in output
    assert "test/acc" in output

    run_dir = wandb_run_dir(tmp_path / "runs")
    report = report_folder(tmp_path / "runs", run_dir)
    assert_report_files(report)
    metrics = json.loads((report / "metrics.json").read_text())
    assert_wandb_holds_robustness_output(run_dir, metrics)
    assert metrics["name"] == "crmt_jt"
    assert metrics["settings"]["smoothing"] == {**metrics["settings"]["smoothing"], **TINY_SMOOTHING}
    assert "| crmt_jt |" in (report / "report.md").read_text()
    assert "# Robustness report: crmt_jt" in output, "the report is printed at the end of the run"

    checkpoints = list((tmp_path / "runs").rglob("last.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    checkpoint = torch.load(checkpoints[0], weights_only=False)
    state = checkpoint["state_dict"]
    assert int(state["phase"]) == 2
    assert_wandb_holds_both_phases(wandb_history(run_dir), checkpoint["hyper_parameters"]["rho"])
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


def test_crmt_jt_with_lipschitz_encoders_certifies_soundly_end_to_end(tmp_path):
    """The encoder overlay on a real fit: step 2 runs on the encoders' sound bounds as tau, and the report holds sound
    radii (the head's exact rows, and Theorem 3.5 with the model's tau), audited without a violation."""
    configs = ["--config", "experiments/crmt_jt.yaml", "--config", "experiments/encoders/lipschitz.yaml"]
    output = run_cli(["fit", *configs, *tiny_run_args(tmp_path)], cwd=REPO)
    assert "tau set to the sound bounds of the encoders" in output
    (checkpoint,) = (tmp_path / "runs").rglob("last.ckpt")
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert int(state["phase"]) == 2
    model = CRMTJointTraining.load_from_checkpoint(checkpoint, weights_only=False)
    assert model.encoder_kind == "lipschitz"
    bounds = torch.tensor([model.encoder_lipschitz_bound(m) for m in range(2)])
    assert torch.allclose(state["tau"], bounds[:, None].expand_as(state["tau"]), rtol=0, atol=1e-6)
    report = report_folder(tmp_path / "runs", wandb_run_dir(tmp_path / "runs"))
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["certified_sound"]["lipschitz"].startswith("sound (1-Lipschitz encoders")
    assert metrics["certified_model"]["lipschitz"].startswith("sound (the model's own tau")
    assert metrics["audit"]["sound_eligible"] > 0 and metrics["audit"]["sound_violations"] == 0
    per_sample = json.loads((report / "per_sample.json").read_text())
    assert set(per_sample["sound_certified"]) == {"multimodal", "multimodal_half", "visual", "visual_half", "audio", "audio_half"}
    budget = metrics["settings"]["multimodal_eps"]
    assert per_sample["sound_certified"]["multimodal"] == [int(r >= budget) for r in per_sample["sound_radius"]["multimodal"]]
    assert "## Sound certified radii (1-Lipschitz encoders)" in (report / "report.md").read_text()


def test_one_seed_flag_seeds_the_model_draws_too(tmp_path):
    """Mixup's ``seed`` (its lam and permutation draws) follows ``--seed_everything`` like the data module's: with a
    seed other than 0 the two used to differ, and Lightning refused to log their hyperparameters (the run stopped)."""
    args = [arg for arg in tiny_run_args(tmp_path) if "step1_epochs" not in arg and "step2_epochs" not in arg]
    run_cli(["fit", "--config", "experiments/mixup.yaml", *args, "--trainer.max_epochs=1", "--seed_everything=3",
             "--report.settings.adaptive.suite=none", "--trainer.enable_progress_bar=false"], cwd=REPO)
    (folder,) = (tmp_path / "runs" / "crmt").iterdir()
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["seed_everything"] == config["data"]["init_args"]["seed"] == config["model"]["init_args"]["seed"] == 3


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
            "--report.settings.smoothing.samples=3",  # of 8 test clips: 0, 2 and 5
        ],
        cwd=REPO,
        env=subprocess_environment(CRMT_STATE_DIR=str(state_dir)),
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
    run_dir = wandb_run_dir(tmp_path / "runs")
    metrics = json.loads((report_folder(tmp_path / "runs", run_dir) / "metrics.json").read_text())
    assert_wandb_holds_robustness_output(run_dir, metrics)
    per_sample = json.loads((report_folder(tmp_path / "runs", run_dir) / "per_sample.json").read_text())
    certified = per_sample["smoothed"]["multimodal"]["index"]
    assert sorted(certified) == sorted(evenly_spaced(len(per_sample["index"]), 3)), "the clips one process would certify"
    assert {i % 2 for i in certified} == {0, 1}, "both ranks' shards (even and odd indices) gathered"
