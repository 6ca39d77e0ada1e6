"""A run folder is a reproducible artifact: its config rebuilds the model (report numbers bit for bit), predict
writes the test step's predictions, a checkpoint of another experiment is refused, a failed start leaves no run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from crmt.cli import main
from crmt.runs import COMMAND_FILE, CONFIG_FILE, resolve_run
from crmt.strategies import CRMTJointTraining
from data_modules import ClipSettings, EmbeddedAVDataModule
from test_cli import REPO, run_cli, tiny_run_args

SEED = 3


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["crmt"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A CRMT-JT fit through both phases by ``python -m crmt fit``, with one seed flag."""
    tmp_path = tmp_path_factory.mktemp("run")
    run_cli(["fit", "--config", "experiments/crmt_jt.yaml", *tiny_run_args(tmp_path), f"--seed_everything={SEED}",
             "--trainer.enable_progress_bar=false"], cwd=REPO)
    (folder,) = (tmp_path / "runs" / "crmt").iterdir()
    return folder


def test_run_folder_holds_its_config_and_command(finished_run):
    config = yaml.safe_load((finished_run / CONFIG_FILE).read_text())
    assert config["model"]["class_path"] == "crmt.strategies.CRMTJointTraining"
    assert config["seed_everything"] == SEED and config["data"]["init_args"]["seed"] == SEED, "one flag seeds the run"
    command = (finished_run / COMMAND_FILE).read_text().splitlines()
    assert len(command) == 1 and " fit --config experiments/crmt_jt.yaml " in command[0] and f"--seed_everything={SEED}" in command[0]
    assert {p.name for p in (finished_run / "checkpoints").glob("*.ckpt")} >= {"last.ckpt", "best.ckpt", "phase-switch.ckpt"}
    assert resolve_run(finished_run.name, finished_run.parents[1]) == finished_run


def test_eval_from_the_run_folder_reproduces_the_report_bit_for_bit(finished_run):
    main(["test", "--run", str(finished_run)])
    own = json.loads((finished_run / "report" / "metrics.json").read_text())
    rebuilt = json.loads((finished_run / "eval" / "last" / "metrics.json").read_text())
    assert rebuilt == own
    assert (finished_run / "eval" / "last" / "per_sample.json").read_text() == (finished_run / "report" / "per_sample.json").read_text()


def test_best_checkpoint_is_the_epoch_of_highest_validation_accuracy(finished_run):
    best = torch.load(finished_run / "checkpoints" / "best.ckpt", weights_only=False)
    (callback,) = [state for key, state in best["callbacks"].items() if key.startswith("ModelCheckpoint")]
    cli = main(["validate", "--run", str(finished_run), "--checkpoint", "best", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.progress_bar_callback is None
    assert cli.trainer.callback_metrics["val/acc"].item() == pytest.approx(float(callback["best_model_score"]), abs=1e-6)


def test_predict_rows_equal_the_models_predictions(finished_run):
    main(["predict", "--run", str(finished_run)])
    with open(finished_run / "predictions" / "last.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # independently: the checkpoint's model on the test split's batches, normalised as the data module does
    model = CRMTJointTraining.load_from_checkpoint(finished_run / "checkpoints" / "last.ckpt", weights_only=True).eval()
    init = yaml.safe_load((finished_run / CONFIG_FILE).read_text())["data"]["init_args"]
    data = EmbeddedAVDataModule(**{**init, "clip": ClipSettings(**init["clip"])})
    data.prepare_data()
    data.setup("test")
    probabilities, labels = [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            probabilities.append(model(model.inputs(batch)).logits.softmax(dim=1))
            labels.append(batch["label"])
    probabilities, labels = torch.cat(probabilities), torch.cat(labels)
    assert [int(row["index"]) for row in rows] == list(range(len(labels)))
    assert [int(row["label"]) for row in rows] == labels.tolist()
    assert [int(row["predicted"]) for row in rows] == probabilities.argmax(dim=1).tolist()
    table = torch.tensor([[float(row[f"p_{k}"]) for k in range(model.num_classes)] for row in rows])
    torch.testing.assert_close(table, probabilities, rtol=0, atol=1e-6)
    assert all(Path(row["clip"]).suffix == ".mp4" and Path(row["clip"]).is_file() for row in rows)
    assert all(row["smoothed"] == "abstain" or 0 <= int(row["smoothed"]) < model.num_classes for row in rows)


def test_predict_on_a_manifest_of_own_clips_without_labels(finished_run, tmp_path):
    """The user's clips, listed in the ``predict`` split with empty labels: rows name the files, labels blank."""
    init = yaml.safe_load((finished_run / CONFIG_FILE).read_text())["data"]["init_args"]
    clips = sorted(Path(init["root"]).rglob("*.mp4"))[:3]
    for clip in clips:
        shutil.copy(clip, tmp_path / clip.name)
    (tmp_path / "manifest.csv").write_text("path,label,split\n" + "".join(f"{c.name},,predict\n" for c in clips))
    output = tmp_path / "mine.csv"
    main(["predict", "--run", str(finished_run), "--data=data_modules.ClipDataModule",
          f"--data.init_args.manifest={tmp_path / 'manifest.csv'}", "--data.init_args.num_workers=0",
          f"--predictions.output={output}", "--predictions.smoothed=false"])
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["clip"]).name for row in rows] == [c.name for c in clips]
    assert [row["label"] for row in rows] == ["", "", ""]
    assert "smoothed" not in rows[0], "--predictions.smoothed false leaves the smoothed column out"


def test_a_checkpoint_of_another_experiment_is_refused(finished_run, tmp_path):
    with pytest.raises(ValueError, match=r"experiment 'crmt_jt'.*CRMTJointTraining.*experiment 'crmt_at'"):
        main(["test", "--config", str(REPO / "experiments" / "crmt_at.yaml"), *tiny_run_args(tmp_path),
              f"--ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}"])


def test_a_run_that_fails_at_start_up_leaves_no_run_behind(tmp_path):
    """The manifest does not exist: the data module's set-up fails after W&B created its run."""
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        main(["fit", "--config", str(REPO / "experiments" / "jt.yaml"), "--data=data_modules.ClipDataModule",
              f"--data.init_args.manifest={tmp_path / 'missing.csv'}", "--data.init_args.num_classes=2",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.default_root_dir={tmp_path / 'runs'}"])
    assert not list((tmp_path / "runs").glob("wandb/offline-run-*")), "no orphan W&B run"
    assert not list((tmp_path / "runs").glob("crmt/*")), "no empty run folder"


def test_a_data_config_changes_one_callback_without_repeating_the_others(tmp_path, capsys):
    data_config = tmp_path / "data.yaml"
    data_config.write_text(
        "data:\n  class_path: data_modules.EmbeddedAVDataModule\n  init_args:\n    root: data/embedded\n"
        "report:\n  settings:\n    smoothing:\n      samples: 5\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "experiments" / "crmt_at.yaml"), "--config", str(data_config), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    defaults = yaml.safe_load((REPO / "experiments" / "defaults.yaml").read_text())
    assert config["report"]["settings"]["smoothing"] == {**defaults["report"]["settings"]["smoothing"], "samples": 5, "seed": 0}
    assert config["report"]["settings"]["multimodal_eps"] == defaults["report"]["settings"]["multimodal_eps"]
    assert config["monitor"]["every_n_epochs"] == defaults["monitor"]["every_n_epochs"]
