"""Strategy mechanics in real Trainer runs: CRMT phase switch, frozen step 2, checkpoint resume; JT."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import StateAtValidationEnd, TensorAVDataModule, make_trainer, orthogonal_validation_by_hand, tau_by_hand
from crmt.robustness.certify import certified_radius, orthogonal_pair_lipschitz, runner_up_bound
from crmt.strategies import crmt as crmt_strategy
from crmt import strategies
from crmt.robustness.ball import PixelRange
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
    assert sorted(changed) == ["head.integration", "phase", "switch_epoch", "tau"], changed
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
    monkeypatch.setattr(crmt_strategy.LipschitzEstimator, "scores", lambda *args: estimator_calls.append(args))
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


def test_validation_accuracy_and_certified_radius_equal_a_per_sample_recomputation(tmp_path, tensor_data):
    """val/acc and val/certified_radius of the last validation epoch, recomputed sample by sample from the
    weights it saw: scores W~^(m) phi^(m), then Theorem 3.5 with tau~ and a^(m) in plain arithmetic."""
    seed_everything(0)
    model = make_model(step1_epochs=1, step2_epochs=1)
    validated = StateAtValidationEnd()
    trainer = make_trainer(2, tmp_path, [validated])
    trainer.fit(model, datamodule=tensor_data)
    metrics = trainer.callback_metrics
    model.load_state_dict(validated.state)
    accuracy, radius = orthogonal_validation_by_hand(model, tensor_data.val_dataloader())
    assert metrics["val/acc"].item() == pytest.approx(accuracy, abs=1e-6)
    assert metrics["val/certified_radius"].item() == pytest.approx(radius, rel=1e-4, abs=1e-7)
    assert radius > 0, "the check needs some certified sample"
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


def test_tau_is_the_largest_per_sample_input_gradient_norm_over_the_training_set(tmp_path, tensor_data):
    """tau~_k^(m) = max_i ||d s_k^(m)(x_i) / d x_i^(m)||_2 over the training samples (method.md §4), the
    gradients taken one sample and one class at a time in eval mode with plain autograd."""
    seed_everything(0)
    model = make_model(step1_epochs=2, step2_epochs=1)
    make_trainer(3, tmp_path).fit(model, datamodule=tensor_data)

    torch.testing.assert_close(model.tau, tau_by_hand(model, tensor_data.train_set), rtol=1e-5, atol=1e-7)


class LearningRates(Callback):
    """The learning rate of each optimiser (step 1's, step 2's) at the start of every epoch and at the end of fit."""

    def __init__(self) -> None:
        self.rates: list[tuple[float, ...]] = []

    def record(self, trainer) -> None:
        self.rates.append(tuple(optimizer.param_groups[0]["lr"] for optimizer in trainer.optimizers))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.record(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.record(trainer)


def test_lr_scheduler_steps_once_per_step1_epoch_and_never_in_step2(tmp_path, tensor_data):
    seed_everything(0)
    scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    model = make_model(step1_epochs=3, step2_epochs=2, lr_scheduler=scheduler, step2_selection="last")
    rates = LearningRates()
    make_trainer(5, tmp_path, [rates]).fit(model, datamodule=tensor_data)

    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
    reference_scheduler = scheduler(reference)
    step1_rates = [reference.param_groups[0]["lr"]]
    for _ in range(3):
        reference.step()
        reference_scheduler.step()
        step1_rates.append(reference.param_groups[0]["lr"])
    assert step1_rates == pytest.approx([1e-2, 5e-3, 2.5e-3, 1.25e-3])
    # epoch starts 0..4, then the end of fit: step 1's rate decays over epochs 0-2 and then stays put
    expected = [(step1_rates[min(epoch, 3)], 5e-2) for epoch in range(6)]
    assert rates.rates == expected, rates.rates


PIXELS = {"visual": ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))}
SMALL = {
    "CRMTMultiModalTransformer": {"embed_dim": 8, "stream_depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 8},
    "MultiModalTransformer": {"embed_dim": 8, "stream_depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 8},
}


@pytest.mark.parametrize("name", [name for name in strategies.__all__ if name != "MultiModalModule"])
def test_every_strategy_takes_pixel_normalization_by_name_and_keeps_it_in_its_hyperparameters(name):
    """The CLI links the data module's ``pixel_normalization`` into every strategy by name: each one passes it on to
    MultiModalModule, which keeps it (saved with the hyperparameters) and builds the attacks' pixel ranges from it."""
    model = getattr(strategies, name)(
        num_classes=3, input_shapes=TensorAVDataModule.input_shapes, pixel_normalization=PIXELS, **SMALL.get(name, {})
    )
    assert model.pixel_normalization == PIXELS
    assert model.hparams.pixel_normalization == {"visual": [[0.5, 0.4, 0.3], [0.2, 0.25, 0.3]]}
    assert model.pixel_ranges == [PixelRange(*PIXELS["visual"]), None]


@pytest.mark.parametrize(
    ("normalization", "message"),
    [
        ({"flow": ((0.5,), (0.2,))}, "names 'flow', which is not one of the model's modalities"),
        ({"visual": ((0.5, 0.5), (0.2, 0.2))}, r"needs 3 means and stds"),
        ({"visual": ((0.5,) * 3, (0.2, 0.0, 0.2))}, "std > 0"),
    ],
)
def test_a_pixel_normalization_that_does_not_fit_the_inputs_is_named(normalization, message):
    with pytest.raises(ValueError, match=message):
        JointTraining(3, TensorAVDataModule.input_shapes, pixel_normalization=normalization)
