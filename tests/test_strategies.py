"""Strategy mechanics in real Trainer runs: CRMT phase switch, frozen step 2, checkpoint resume; JT."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import TensorAVDataModule, make_trainer
from crmt.robustness.certify import certified_radius, orthogonal_pair_lipschitz, runner_up_bound
from crmt.strategies import crmt as crmt_strategy
from crmt.strategies import CRMTJointTraining, JointTraining


def make_model(num_classes: int = 3, step1_epochs: int = 2, step2_epochs: int = 2, **kwargs) -> CRMTJointTraining:
    return CRMTJointTraining(
        num_classes=num_classes,
        input_shapes=TensorAVDataModule.input_shapes,
        encoder_width=4,
        step1_epochs=step1_epochs,
        step2_epochs=step2_epochs,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
        **{"step2_optimizer": partial(torch.optim.Adam, lr=5e-2), **kwargs},
    )


class PhaseRecorder(Callback):
    """Records the phase at each epoch end and a state snapshot at the last step-1 epoch."""

    def __init__(self, step1_epochs: int) -> None:
        self.step1_epochs = step1_epochs
        self.phases: list[tuple[int, int]] = []
        self.step1_state: dict[str, torch.Tensor] | None = None
        self.bound_at_switch: float | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.phases.append((trainer.current_epoch, int(pl_module.phase)))
        if trainer.current_epoch == self.step1_epochs - 1:
            self.step1_state = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.step1_epochs and batch_idx == 0:
            self.bound_at_switch = cached_mean_bound(pl_module)


def cached_mean_bound(model: CRMTJointTraining) -> float:
    cache = model.score_cache
    with torch.no_grad():
        bound = runner_up_bound(
            cache.scores[:, cache.present], model.head.integration, model.head.bias, model.tau, cache.labels[cache.present]
        )
    return bound.mean().item()


def test_phase_switches_at_step1_epochs_and_step2_changes_only_integration(tmp_path, tensor_data):
    seed_everything(0)
    model = make_model(step1_epochs=2, step2_epochs=3, step2_selection="last")
    recorder = PhaseRecorder(step1_epochs=2)
    make_trainer(5, tmp_path, [recorder]).fit(model, datamodule=tensor_data)

    assert recorder.phases == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)]
    assert (model.tau > 0).all(), "tau~ must be estimated for every class and modality"
    assert int(model.score_cache.present.sum()) == len(tensor_data.train_set)

    before, after = recorder.step1_state, model.state_dict()
    changed = [name for name in after if not torch.equal(before[name], after[name])]
    assert sorted(changed) == ["head.integration", "phase", "scored_epoch", "tau"], changed
    assert recorder.bound_at_switch is not None
    assert cached_mean_bound(model) > recorder.bound_at_switch


class IntegrationRecorder(Callback):
    """a^(m) at the switch and after each step-2 epoch's updates (callbacks run before the module's
    own epoch-end hook, where the selection happens)."""

    def __init__(self, step1_epochs: int) -> None:
        self.step1_epochs = step1_epochs
        self.weights: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.step1_epochs:
            self.weights.append(pl_module.head.integration.detach().clone())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.step1_epochs:
            self.weights.append(pl_module.head.integration.detach().clone())


def validation_certificate_by_forward(model: CRMTJointTraining, data, integration: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean certified radius) of the validation split from full forward passes with ``integration``."""
    final = model.head.integration.detach().clone()
    correct, radii = [], []
    with torch.no_grad():
        model.head.integration.copy_(integration)
        model.eval()
        for batch in data.val_dataloader():
            logits = model(model.inputs(batch)).logits
            radii.append(certified_radius(logits, batch["label"], orthogonal_pair_lipschitz(integration, model.tau)))
            correct.append(logits.argmax(dim=1) == batch["label"])
        model.head.integration.copy_(final)
    return torch.cat(correct).float().mean().item(), torch.cat(radii).mean().item()


def test_step2_keeps_the_integration_weights_of_the_best_validation_epoch(tmp_path, tensor_data):
    seed_everything(0)
    model = make_model(step1_epochs=2, step2_epochs=5, step2_optimizer=partial(torch.optim.Adam, lr=2e-1))
    recorder = IntegrationRecorder(step1_epochs=2)
    make_trainer(7, tmp_path, [recorder]).fit(model, datamodule=tensor_data)

    assert len(recorder.weights) == 6  # the switch and 5 step-2 epochs
    scores = [validation_certificate_by_forward(model, tensor_data, a) for a in recorder.weights]
    floor = scores[0][0]
    admissible = [i for i, (accuracy, _) in enumerate(scores) if accuracy >= floor]
    expected = max(admissible, key=lambda i: (scores[i][1], -i))
    assert int(model.best_step2_epoch) == expected + 1, (scores, int(model.best_step2_epoch))
    assert torch.equal(model.head.integration.detach(), recorder.weights[expected])
    assert float(model.best_val_radius) == pytest.approx(scores[expected][1], rel=1e-5)


def test_step2_selection_last_keeps_the_final_integration_weights(tmp_path, tensor_data):
    seed_everything(0)
    model = make_model(step1_epochs=2, step2_epochs=3, step2_selection="last", step2_optimizer=partial(torch.optim.Adam, lr=2e-1))
    recorder = IntegrationRecorder(step1_epochs=2)
    make_trainer(5, tmp_path, [recorder]).fit(model, datamodule=tensor_data)
    assert torch.equal(model.head.integration.detach(), recorder.weights[-1])
    assert not torch.equal(recorder.weights[-1], recorder.weights[0])


def test_resume_from_step2_checkpoint_continues_step2(tmp_path, tensor_data, monkeypatch):
    tensor_data.batch_size = len(tensor_data.train_set)  # full-batch step 2: independent of the data order
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    seed_everything(0)
    uninterrupted = make_model(step1_epochs=1, step2_epochs=3)
    make_trainer(4, tmp_path, [checkpoints]).fit(uninterrupted, datamodule=tensor_data)

    saved = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=False)["state_dict"]
    assert int(saved["phase"]) == 2

    class LoadedState(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.current_epoch == 2 and batch_idx == 0:
                self.phase = int(pl_module.phase)
                self.tau = pl_module.tau.clone()
                self.integration = pl_module.head.integration.detach().clone()

    estimator_calls = []
    monkeypatch.setattr(crmt_strategy, "score_gradient_norms", lambda *args: estimator_calls.append(args))
    seed_everything(0)
    loaded = LoadedState()
    resumed = make_model(step1_epochs=1, step2_epochs=3)
    make_trainer(4, tmp_path, [loaded]).fit(resumed, datamodule=tensor_data, ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")

    assert loaded.phase == 2
    assert estimator_calls == [], "a resumed step-2 run must reuse the saved tau~, not estimate it again"
    torch.testing.assert_close(loaded.tau, saved["tau"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.integration, saved["head.integration"], rtol=0, atol=0)
    torch.testing.assert_close(resumed.tau, uninterrupted.tau, rtol=0, atol=0)
    torch.testing.assert_close(resumed.head.integration, uninterrupted.head.integration, rtol=1e-5, atol=1e-6)
    for name, value in uninterrupted.state_dict().items():
        if name != "head.integration":
            assert torch.equal(resumed.state_dict()[name], value), name


def test_validation_reports_accuracy_and_certified_radius(tmp_path, tensor_data):
    seed_everything(0)
    model = make_model(step1_epochs=1, step2_epochs=1)
    trainer = make_trainer(2, tmp_path)
    trainer.fit(model, datamodule=tensor_data)
    metrics = trainer.callback_metrics
    assert 0.0 <= metrics["val/acc"].item() <= 1.0
    assert metrics["val/certified_radius"].item() >= 0.0
    assert metrics["train/phase"].item() == 2.0


def test_joint_training_learns_the_tensor_task(tmp_path, tensor_data):
    seed_everything(0)
    model = JointTraining(
        num_classes=3, input_shapes=TensorAVDataModule.input_shapes, encoder_width=4, optimizer=partial(torch.optim.Adam, lr=1e-2)
    )
    trainer = make_trainer(10, tmp_path)
    trainer.fit(model, datamodule=tensor_data)
    assert trainer.callback_metrics["val/acc"].item() > 0.6  # chance is 1/3
    assert "val/certified_radius" not in trainer.callback_metrics
