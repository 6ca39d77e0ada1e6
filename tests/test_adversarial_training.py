"""MMAT and CRMT-AT train on adversarial inputs inside the joint budget; the crmt_step2 ablation changes only a^(m)."""

from __future__ import annotations

import copy
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from crmt.cli import main
from crmt.robustness.ball import joint_norm
from crmt.strategies import CRMTAdversarialTraining, MultiModalAdversarialTraining
from helpers import TensorAVDataModule, fit_tiny

REPO = Path(__file__).resolve().parents[1]


class TrainingInputRecorder(Callback):
    """Records each clean training batch and the inputs the encoders saw in training mode (not the attack's)."""

    def __init__(self) -> None:
        self.clean: list[list[torch.Tensor]] = []
        self.trained_on: list[list[torch.Tensor]] = []
        self.handles = []

    def on_fit_start(self, trainer, pl_module) -> None:
        for m, name in enumerate(pl_module.modalities):
            self.handles.append(pl_module.encoders[name].register_forward_pre_hook(partial(self._record, m)))

    def _record(self, m, module, args) -> None:
        if module.training:
            if m == 0:
                self.trained_on.append([])
            self.trained_on[-1].append(args[0].detach().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clean.append([batch[name].clone() for name in pl_module.modalities])


@pytest.mark.parametrize("strategy", ["mmat", "crmt_at"])
def test_training_inputs_are_adversarial_within_the_joint_budget(strategy):
    seed_everything(0)
    data = TensorAVDataModule(train_size=16, val_size=8)
    common = dict(num_classes=3, input_shapes=data.input_shapes, encoder_width=4, at_eps=0.3, at_steps=3,
                  at_step_fraction=0.5, optimizer=partial(torch.optim.Adam, lr=1e-2))
    if strategy == "mmat":
        model = MultiModalAdversarialTraining(**common)
    else:
        model = CRMTAdversarialTraining(**common, step1_epochs=1, step2_epochs=1)
    recorder = TrainingInputRecorder()
    fit_tiny(model, data, epochs=1, callbacks=[recorder])
    assert len(recorder.trained_on) == len(recorder.clean) == 2
    for clean, trained in zip(recorder.clean, recorder.trained_on):
        norms = joint_norm([t - c for t, c in zip(trained, clean)])
        assert (norms <= 0.3 + 1e-5).all(), norms
        assert (norms > 0.05).all(), "every training input is perturbed"
        assert all(not torch.equal(t, c) for t, c in zip(trained, clean)), "both modalities are perturbed"


def test_adversarial_training_clamps_frames_with_the_model_own_pixel_ranges():
    """The pixel ranges are the model's (``pixel_normalization``, linked from the data module by the CLI), not looked
    up on the data module: this one declares none, and the frames still stay valid pixels; audio is not clamped."""
    seed_everything(0)
    data = TensorAVDataModule(train_size=16, val_size=8)
    model = MultiModalAdversarialTraining(
        num_classes=3, input_shapes=data.input_shapes, encoder_width=4, at_eps=20.0, at_steps=2, at_step_fraction=1.0,
        optimizer=partial(torch.optim.Adam, lr=1e-2), pixel_normalization={"visual": ((0.5,) * 3, (0.25,) * 3)},
    )
    recorder = TrainingInputRecorder()
    fit_tiny(model, data, epochs=1, callbacks=[recorder])
    clean_visual = torch.cat([clean[0] for clean in recorder.clean])
    visual, audio = (torch.cat(inputs) for inputs in zip(*recorder.trained_on))
    assert (clean_visual.abs() > 2).any(), "some clean values lie outside the range, so clamping shows"
    assert visual.min() >= -2 - 1e-5 and visual.max() <= 2 + 1e-5, "(p - 0.5) / 0.25 of p in [0, 1]"
    assert (visual.abs() > 2 - 1e-4).any()
    assert audio.abs().max() > 2, "audio has no pixel range"


def test_invalid_adversary_settings_are_named():
    with pytest.raises(ValueError, match="at_eps"):
        MultiModalAdversarialTraining(num_classes=3, input_shapes=TensorAVDataModule.input_shapes, at_eps=0.0)


class StateAtSwitch(Callback):
    def __init__(self, switch_epoch: int) -> None:
        self.switch_epoch = switch_epoch
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.switch_epoch - 1:
            self.state = copy.deepcopy(pl_module.state_dict())


def test_crmt_step2_ablation_trains_ce_only_then_changes_only_integration_weights(tmp_path, monkeypatch):
    """experiments/crmt_step2.yaml: a cross-entropy-only orthogonal model (rho = 0), then step 2 on a^(m) alone."""
    monkeypatch.setattr(sys, "argv", ["crmt"])
    recorder = StateAtSwitch(switch_epoch=1)
    cli = main(
        [
            "fit", "--config", str(REPO / "experiments" / "crmt_step2.yaml"),
            f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.num_classes=3",
            "--data.init_args.train_per_class=4", "--data.init_args.val_per_class=2", "--data.init_args.test_per_class=2",
            "--data.init_args.num_workers=0", "--model.init_args.encoder_width=4",
            "--model.init_args.step1_epochs=1", "--model.init_args.step2_epochs=2",
            "--model.init_args.step2_selection=last",
            "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--test_after_fit=false",
        ],
        callbacks=[recorder],
    )
    model = cli.model
    assert model.hparams.rho == 0.0 and int(model.phase) == 2
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, recorder.state[name])]
    assert sorted(changed) == ["head.integration", "phase", "switch_epoch", "tau"], changed
