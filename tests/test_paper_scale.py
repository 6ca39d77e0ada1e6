"""Paper-scale schedules (``experiments/scale/paper/``): every experiment either composes, on a real dataset,
to the published setting (the table below, written independently from docs/baselines.md) or is refused with its
reason; ``python -m crmt.experiments`` says on stderr when a real dataset runs at the experiment's own toy scale.

The configuration is the one the real CLI parser composes (``python -m crmt fit --config ... --print_config``):
nothing is instantiated or trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from crmt import experiments
from crmt.cli import main as cli_main
from crmt.experiments import ScheduleRefused, config_files

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SCHEDULES = EXPERIMENTS / "scale" / "paper"
REAL_DATASETS = ("ks", "vggsound", "ucf101", "cremad")

# ---------------------------------------------------------------- the published values (docs/baselines.md)
SHARED = {
    # §0.3: the CRMT code's setup, shared by every strategy at the paper's scale
    "seed_everything": 2024,
    "model.init_args.encoder_width": 64,
    "model.init_args.optimizer.class_path": "torch.optim.SGD",
    "model.init_args.optimizer.init_args.lr": 1e-3,
    "model.init_args.optimizer.init_args.momentum": 0.9,
    "model.init_args.optimizer.init_args.weight_decay": 1e-4,
    "model.init_args.lr_scheduler.class_path": "torch.optim.lr_scheduler.StepLR",
    "model.init_args.lr_scheduler.init_args.step_size": 60,
    "model.init_args.lr_scheduler.init_args.gamma": 0.1,
    "data.class_path": "data_modules.KineticsSoundsDataModule",
    "data.init_args.batch_size": 64,
}
ONE_PHASE = {"trainer.max_epochs": 140}
"""§0.3: 140 epochs (the CRMT code's n_epochs), for every strategy without phases."""
CRMT_STEP2 = {
    # §9.4: 45 epochs (n_epochs // 3 - 1), only the integration weights, SGD lr 0.03 x 1e-3
    "model.init_args.step2_epochs": 45,
    "model.init_args.step2_optimizer.class_path": "torch.optim.SGD",
    "model.init_args.step2_optimizer.init_args.lr": 3e-5,
    "model.init_args.step2_optimizer.init_args.momentum": 0.9,
    "model.init_args.step2_optimizer.init_args.weight_decay": 1e-2,
    "model.init_args.init_integration": 0.1,
}
CRMT_STEP1 = {"model.init_args.rho": 2.0, "model.init_args.step1_epochs": 140}  # §9.2
TRAINING_ATTACK = {  # §6, §9.5: the CRMT code's generate_AT_sample
    "model.init_args.at_eps": 0.1,
    "model.init_args.at_steps": 5,
    "model.init_args.at_step_fraction": 0.2,
    "model.init_args.at_random_start": False,
}
PHASED = {"trainer.max_epochs": None}
"""The CLI then sets trainer.max_epochs = step1_epochs + step2_epochs (CRMTCLI.before_instantiate_classes)."""

PUBLISHED: dict[str, dict[str, object]] = {
    "jt": {**ONE_PHASE},
    "gb": {  # §2.3 variant A: online, super-epoch 10, forks trained for the whole super-epoch, 10% held out
        **ONE_PHASE,
        "model.init_args.super_epoch": 10,
        "model.init_args.estimation_epochs": 10,
        "model.init_args.holdout_fraction": 0.1,
    },
    "ogm": {  # §3: the OGM-GE README command
        **ONE_PHASE,
        "model.init_args.alpha": 0.1,
        "model.init_args.modulation_starts": 0,
        "model.init_args.modulation_ends": 50,
        "model.init_args.ogm_ge": True,
    },
    "pmr": {  # §4.4: the official PMR defaults
        **ONE_PHASE,
        "model.init_args.alpha": 1.0,
        "model.init_args.momentum": 0.2,
        "model.init_args.prototype_fraction": 0.1,
        "model.init_args.modulation_starts": 0,
        "model.init_args.modulation_ends": 100,
    },
    "msefm": {  # §5.2, §5.3: 140 MinSim epochs, then AVR's 30 defense epochs; AVR's lambda_sim, K, lambda, cap, kappa
        **PHASED,
        "model.init_args.step1_epochs": 140,
        "model.init_args.step2_epochs": 30,
        "model.init_args.similarity_weight": 1.0,
        "model.init_args.memory_size": 1024,
        "model.init_args.sparsity": 0.1,
        "model.init_args.ista_iterations": 2000,
        "model.init_args.kappa": 0.5,
    },
    "mmat": {**ONE_PHASE, **TRAINING_ATTACK},
    "mixup": {**ONE_PHASE, "model.init_args.mixup_alpha": 1.0},  # §7: Beta(1, 1)
    "crmt_jt": {**PHASED, **CRMT_STEP1, **CRMT_STEP2},
    "crmt_at": {**PHASED, **CRMT_STEP1, **CRMT_STEP2, **TRAINING_ATTACK},
    "crmt_mix": {**PHASED, **CRMT_STEP1, **CRMT_STEP2, "model.init_args.mixup_alpha": 1.0},
    # §9.7: the paper's ablations, CRMT-JT's published steps with one part removed
    "crmt_step1": {**PHASED, **CRMT_STEP1, "model.init_args.step2_epochs": 0},
    "ojt": {**PHASED, "model.init_args.rho": 0.0, "model.init_args.step1_epochs": 140, "model.init_args.step2_epochs": 0},
    "crmt_step2": {**PHASED, "model.init_args.rho": 0.0, "model.init_args.step1_epochs": 140, **CRMT_STEP2},
}
TOTAL_EPOCHS = {"msefm": 170, "crmt_jt": 185, "crmt_at": 185, "crmt_mix": 185, "crmt_step1": 140, "ojt": 140, "crmt_step2": 185}

REFUSED: dict[str, str] = {
    # §8: no architecture, optimiser or code published for the paper's MMT
    "mmt": "MMT no architecture",
    "crmt_mmt": "architecture, optimiser and schedule are unpublished",
    # §11: Gaussian-noise training for randomized smoothing is this project's own
    "jt_noise": "crmt's own addition",
    "crmt_jt_noise": "crmt's own addition",
}


def all_experiments() -> set[str]:
    return {path.stem for path in EXPERIMENTS.glob("*.yaml")} - {"defaults"}


def test_every_experiment_has_a_published_schedule_or_a_refusal():
    assert set(PUBLISHED) | set(REFUSED) == all_experiments() and not set(PUBLISHED) & set(REFUSED)
    assert {path.stem for path in SCHEDULES.glob("*.yaml")} == set(PUBLISHED)
    assert {path.stem for path in SCHEDULES.glob("*.refused")} == set(REFUSED)


# ---------------------------------------------------------------- composed configurations
def composed_config(paths: list[Path], monkeypatch, capsys) -> dict:
    """What ``python -m crmt fit --config ... --print_config`` composes (defaults.yaml first)."""
    monkeypatch.setattr(sys, "argv", ["crmt"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *(argument for path in paths for argument in ("--config", str(path))), "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def resolved(config: dict, dotted: str) -> object:
    value: object = config
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"{dotted}: no {key!r} in the composed config"
        value = value[key]
    return value


@pytest.mark.parametrize("experiment", sorted(PUBLISHED))
def test_the_paper_scale_schedule_composes_to_the_published_setting(experiment, monkeypatch, capsys):
    files = config_files(experiment, "ks")
    assert files[1:3] == [EXPERIMENTS / "scale" / "paper.yaml", SCHEDULES / f"{experiment}.yaml"]
    config = composed_config(files, monkeypatch, capsys)
    own = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())["model"]["class_path"]
    assert config["model"]["class_path"] == own, "a schedule sets values, never another strategy"
    expected = {**SHARED, **PUBLISHED[experiment]}
    actual = {key: resolved(config, key) for key in expected}
    assert actual == pytest.approx(expected), experiment
    model = config["model"]["init_args"]
    epochs = config["trainer"]["max_epochs"] or model["step1_epochs"] + model["step2_epochs"]
    assert epochs == TOTAL_EPOCHS.get(experiment, 140)


@pytest.mark.parametrize("experiment", sorted(REFUSED))
@pytest.mark.parametrize("data", REAL_DATASETS)
def test_an_experiment_without_a_published_setting_is_refused_with_its_reason(experiment, data):
    reason = " ".join((SCHEDULES / f"{experiment}.refused").read_text().split())
    assert REFUSED[experiment] in reason and "No published setting" in reason
    with pytest.raises(ScheduleRefused) as refusal:
        config_files(experiment, data)
    message = str(refusal.value)
    assert f"experiment {experiment!r} has no paper-scale schedule" in message and reason in message
    assert f"make train EXP={experiment} DATA={data} SCALE=" in message
    assert config_files(experiment, data, scale=None) == [EXPERIMENTS / f"{experiment}.yaml", EXPERIMENTS / "data" / f"{data}.yaml"]


def test_a_schedule_neither_written_nor_refused_is_named_missing(tmp_path):
    (tmp_path / "scale" / "paper").mkdir(parents=True)
    for path in ("x.yaml", "y.yaml", "scale/paper.yaml", "scale/paper/y.yaml", "data/ks.yaml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}\n")
    assert config_files("y", "ks", root=tmp_path)[-2:] == [tmp_path / "scale" / "paper" / "y.yaml", tmp_path / "data" / "ks.yaml"]
    with pytest.raises(FileNotFoundError, match=r"'x' has no paper-scale schedule.*schedules: y.*SCALE=") as missing:
        config_files("x", "ks", root=tmp_path)
    assert not isinstance(missing.value, ScheduleRefused)


# ---------------------------------------------------------------- python -m crmt.experiments
def test_a_refused_run_prints_no_configuration_and_the_reason(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert experiments.main(["crmt_mmt", "--data", "vggsound"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "crmt_mmt" in err and "No published setting" in err and "SCALE=" in err


def test_a_real_dataset_at_no_scale_says_on_stderr_that_it_runs_toy_settings(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert experiments.main(["jt", "--data", "ks", "--scale", ""]) == 0
    out, err = capsys.readouterr()
    assert out == "--config experiments/jt.yaml --config experiments/data/ks.yaml\n", "stdout: the --config arguments only"
    note = err.strip()
    assert note.startswith("crmt.experiments: note: jt on 'ks' at no scale gets the experiment's own toy settings")
    # jt.yaml: width 8, 8 epochs, Adam lr 3e-3; defaults.yaml: seed 0 and budgets 8x the paper's 0.5 / 1.0
    for fact in ("encoder width 8", "8 epochs", "Adam lr 0.003", "seed 0", "attack budgets 4.0 joint, 8.0 uni-modal"):
        assert fact in note, fact
    assert experiments.main(["crmt_jt", "--data", "ucf101", "--scale", ""]) == 0
    assert "encoder width 8, 6 + 5 epochs" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [["jt", "--data", "ks"], ["jt", "--data", "embedded", "--scale", ""], ["jt", "--scale", ""]])
def test_no_note_at_the_paper_scale_or_on_the_embedded_data(arguments, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert experiments.main(arguments) == 0
    assert capsys.readouterr().err == ""
