"""Nothing lost on interruption: a fit resumed from any epoch boundary, or after SIGTERM, SIGUSR1 or
Ctrl-C, ends with the uninterrupted fit's weights and report, compared tensor by tensor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything

from crmt.callbacks import RunCheckpoints
from crmt.callbacks.checkpoints import find_last_checkpoint
from crmt.strategies import JointTraining
from helpers import TINY_SMOOTHING_ARGS, TensorAVDataModule, make_trainer, subprocess_environment

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--data.init_args.train_per_class=6",
    "--data.init_args.val_per_class=2",
    "--data.init_args.test_per_class=2",
    "--data.init_args.num_classes=4",
    "--data.init_args.batch_size=8",
    "--model.init_args.encoder_width=4",
    "--trainer.max_epochs=4",
    *TINY_SMOOTHING_ARGS,
]
CRMT_SCHEDULE = ["--model.init_args.step1_epochs=2", "--model.init_args.step2_epochs=2"]


def fit(experiment: str, root: Path, data: Path, *extra: str, logger: bool = False, env: dict[str, str] | None = None):
    """``python -m crmt fit`` of a tiny ``experiment`` writing under ``root``; returns the finished process."""
    args = [
        "fit", "--config", f"experiments/{experiment}.yaml", *TINY, f"--data.init_args.root={data}",
        *(CRMT_SCHEDULE if experiment.startswith("crmt") else []),
        f"--trainer.default_root_dir={root}", f"--report.output_dir={root / 'report'}",
        *([f"--trainer.logger.init_args.save_dir={root}"] if logger else ["--trainer.logger=false"]),
        "--trainer.callbacks+=benchmarks.resume_check.EpochSnapshots", *extra,
    ]
    (root / "snapshots").mkdir(parents=True, exist_ok=True)
    environment = subprocess_environment(
        CRMT_SNAPSHOT_DIR=str(root / "snapshots"),
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO / "src"), str(REPO)]), **(env or {}),
    )
    return subprocess.run([sys.executable, "-m", "crmt", *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=600)


def finished(process) -> None:
    assert process.returncode == 0, (process.stdout + process.stderr)[-5000:]


def final_checkpoint(root: Path) -> Path:
    (path,) = root.rglob("checkpoints/last.ckpt")
    return path


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Every parameter and buffer of the final checkpoints equal bit for bit, and the same report."""
    states = [torch.load(final_checkpoint(root), weights_only=False)["state_dict"] for root in (reference, resumed)]
    assert states[0].keys() == states[1].keys()
    differing = [name for name, value in states[0].items() if not torch.equal(value, states[1][name])]
    assert differing == [], f"the resumed run ended with different tensors: {differing}"
    reports = [json.loads((root / "report" / "metrics.json").read_text()) for root in (reference, resumed)]
    for key in ("accuracy", "certified", "certified_model", "eta_ratio", "smoothed"):
        assert reports[0].get(key) == reports[1].get(key), key


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedded")


def test_crmt_jt_resumed_at_the_switch_in_step_2_and_after_sigterm_equals_the_uninterrupted_fit(tmp_path, data):
    reference = tmp_path / "reference"
    finished(fit("crmt_jt", reference, data))
    switch = torch.load(reference / "checkpoints" / "phase-switch.ckpt", weights_only=False)
    assert switch["epoch"] == 1 and int(switch["state_dict"]["phase"]) == 2, "phase-switch.ckpt holds the switch"

    for point in (1, 2):  # at the switch (end of the last step-1 epoch), inside step 2
        resumed = tmp_path / f"resumed{point}"
        finished(fit("crmt_jt", resumed, data, f"--ckpt_path={reference / 'snapshots' / f'epoch{point}.ckpt'}"))
        assert_same_run(reference, resumed)

    # SIGTERM in the middle of epoch 1 (step 1): a checkpoint is left and the exit status says so
    interrupted = tmp_path / "interrupted"
    process = fit("crmt_jt", interrupted, data, "--trainer.callbacks+=helpers.SignalAt", logger=True,
                  env={"CRMT_TEST_SIGNAL": f"1:0:{int(signal.SIGTERM)}"})
    assert process.returncode == 128 + signal.SIGTERM, (process.stdout + process.stderr)[-3000:]
    (folder,) = interrupted.glob("crmt/*/checkpoints")
    assert torch.load(folder / "last.ckpt", weights_only=False)["epoch"] == 0, "last.ckpt: the end of epoch 0"
    assert (folder / "interrupted.ckpt").is_file() and not list(folder.glob("*.partial"))

    process = fit("crmt_jt", interrupted, data, "--resume=last", logger=True)
    finished(process)
    assert f"resuming {folder / 'last.ckpt'}" in process.stdout, "--resume last found the interrupted run"
    assert_same_run(reference, interrupted)
    assert list(interrupted.glob("crmt/*/checkpoints")) == [folder], "the resumed run writes into its own run folder"
    torch.load(folder / "last.ckpt", weights_only=True)  # random states included, nothing needs unpickling

    context = json.loads((reference / "report" / "metrics.json").read_text())["run"]
    assert (context["seed"], context["world_size"], context["precision"], context["skipped_clips"]) == (0, 1, "32-true", [])
    assert context["versions"]["torch"] == torch.__version__ and context["threads"] == torch.get_num_threads()


@pytest.mark.parametrize(("experiment", "signum", "status"), [("jt", signal.SIGUSR1, 128 + signal.SIGUSR1),
                                                              ("crmt_at", signal.SIGINT, 1)])
def test_fit_interrupted_by_sigusr1_or_ctrl_c_resumes_to_the_uninterrupted_fit(tmp_path, data, experiment, signum, status):
    reference = tmp_path / "reference"
    finished(fit(experiment, reference, data))
    interrupted = tmp_path / "interrupted"
    process = fit(experiment, interrupted, data, "--trainer.callbacks+=helpers.SignalAt",
                  env={"CRMT_TEST_SIGNAL": f"2:0:{int(signum)}"})
    assert process.returncode == status, (process.stdout + process.stderr)[-3000:]
    assert (interrupted / "checkpoints" / "interrupted.ckpt").is_file()
    finished(fit(experiment, interrupted, data, "--resume=last"))
    assert_same_run(reference, interrupted)


def test_two_process_ddp_fit_resumed_at_the_switch_equals_the_uninterrupted_one(tmp_path, data):
    # No loader workers: a worker forked by a DDP rank once hung in fork's child handlers (docs/scaling.md).
    ddp = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2", "--data.init_args.num_workers=0"]
    reference = tmp_path / "reference"
    finished(fit("crmt_jt", reference, data, *ddp))
    resumed = tmp_path / "resumed"
    finished(fit("crmt_jt", resumed, data, *ddp, f"--ckpt_path={reference / 'snapshots' / 'epoch1.ckpt'}"))
    assert_same_run(reference, resumed)


def test_mid_epoch_checkpoints_are_written_on_time_and_atomically(tmp_path):
    seed_everything(0)
    data = TensorAVDataModule()
    model = JointTraining(3, data.input_shapes, encoder_width=4)
    checkpoints = RunCheckpoints(dirpath=str(tmp_path), mid_epoch_minutes=1e-9)  # due after every batch
    saved_steps = []
    checkpoints._save_checkpoint = lambda trainer, path, save=checkpoints._save_checkpoint: (
        saved_steps.append((Path(path).name, trainer.global_step)), save(trainer, path))
    make_trainer(1, tmp_path, [checkpoints]).fit(model, datamodule=data)
    batches = len(data.train_dataloader())
    assert saved_steps == [("last.ckpt", 0)] + [("mid-epoch.ckpt", step) for step in range(1, batches + 1)] + [
        ("last.ckpt", batches)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt", "mid-epoch.ckpt"], "no .partial left"
    assert torch.load(tmp_path / "mid-epoch.ckpt", weights_only=True)["global_step"] == batches


def test_resume_last_picks_the_newest_run_of_the_same_config_files(tmp_path):
    def run(name: str, configs: list[str], age: int) -> Path:
        folder = tmp_path / "crmt" / name / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"configs": configs}))
        (folder / "last.ckpt").write_bytes(b"")
        os.utime(folder / "last.ckpt", (age, age))
        return folder / "last.ckpt"

    run("old", ["experiments/crmt_at.yaml"], 1000)
    newest = run("new", ["experiments/crmt_at.yaml"], 2000)
    run("other", ["experiments/crmt_at.yaml", "experiments/data/embedded_misleading.yaml"], 3000)
    assert find_last_checkpoint(tmp_path, ["experiments/crmt_at.yaml"]) == newest
    with pytest.raises(FileNotFoundError, match="no run started with --config experiments/jt.yaml"):
        find_last_checkpoint(tmp_path, ["experiments/jt.yaml"])
