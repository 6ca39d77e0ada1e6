"""The baselines' distinguishing mechanisms, asserted directly, and a real fit of each through its whole schedule.

GB, OGM-GE, PMR, MSEFM, Mixup, CRMT-Mix, MMT and CRMT-MMT (baselines.md §2-§8, method.md §3 Variants).
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    StateAtValidationEnd,
    TensorAVDataModule,
    forward_accuracy,
    make_trainer,
    orthogonal_validation_by_hand,
)
from lightning.pytorch import Callback, seed_everything

from crmt.losses import mixup_margin_regularizer
from crmt.mixing import mix_inputs
from crmt.models.heads import ConcatFusion
from crmt.seeding import step_generator
from crmt.strategies import (
    OGMGE,
    CRMTMixup,
    CRMTMultiModalTransformer,
    GradientBlending,
    MinSimExFMem,
    MixupTraining,
    MultiModalModule,
    MultiModalTransformer,
    PrototypicalModalRebalance,
)
from crmt.strategies.gb import BranchFit, ForkData, blend_weights
from crmt.strategies.msefm import ista_codes, ista_step_size
from crmt.strategies.ogm import modulation_coefficients, uni_modal_confidence
from crmt.strategies.pmr import prototype_logits

SHAPES = TensorAVDataModule.input_shapes
ADAM = partial(torch.optim.Adam, lr=1e-2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a shared CPU, more threads oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def first_batch(data: TensorAVDataModule) -> dict[str, torch.Tensor]:
    return next(iter(data.val_dataloader()))


def raw_features(model: MultiModalModule, batch) -> list[torch.Tensor]:
    """phi^(m) of the plain encoders (without any strategy-specific forward)."""
    return [model.encoders[name](batch[name]) for name in model.modalities]


# --------------------------------------------------------------------------- Mixup
def test_mix_inputs_mixes_every_modality_with_one_lambda_and_permutation():
    inputs = [torch.randn(6, 3, 2, 4, 4), torch.randn(6, 1, 5, 7)]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    global_state = torch.random.get_rng_state()
    mixed = mix_inputs(inputs, labels, 0.4, torch.Generator().manual_seed(3))
    again = mix_inputs(inputs, labels, 0.4, torch.Generator().manual_seed(3))

    assert torch.equal(torch.random.get_rng_state(), global_state), "mixing must not draw from the global RNG"
    assert 0.0 < mixed.lam < 1.0 and mixed.lam == again.lam and torch.equal(mixed.permutation, again.permutation)
    assert sorted(mixed.permutation.tolist()) == list(range(6)) and not torch.equal(mixed.permutation, torch.arange(6))
    for x, x_mixed in zip(inputs, mixed.inputs, strict=True):
        torch.testing.assert_close(x_mixed, mixed.lam * x + (1 - mixed.lam) * x[mixed.permutation])
    assert torch.equal(mixed.labels_a, labels) and torch.equal(mixed.labels_b, labels[mixed.permutation])
    logits = torch.randn(6, 3)
    expected = mixed.lam * F.cross_entropy(logits, labels) + (1 - mixed.lam) * F.cross_entropy(logits, mixed.labels_b)
    torch.testing.assert_close(mixed.cross_entropy(logits), expected)


class BatchAndForwardRecorder(Callback):
    """Records each training batch with its global step, and the inputs of the model's forward in training."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.forward_inputs: list[list[torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        def record(module, args):
            if module.training:
                self.forward_inputs.append([x.detach().clone() for x in args[0]])

        pl_module.register_forward_pre_hook(record)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.global_step, {k: v.clone() for k, v in batch.items()}))


def test_mixup_trains_on_inputs_mixed_with_the_step_seeded_lambda_and_permutation(tmp_path, tensor_data):
    seed_everything(0)
    model = MixupTraining(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, mixup_alpha=0.5, seed=7)
    recorder = BatchAndForwardRecorder()
    trainer = make_trainer(2, tmp_path, [recorder])
    trainer.fit(model, datamodule=tensor_data)

    assert len(recorder.batches) == len(recorder.forward_inputs) == 6
    lambdas = set()
    for (step, batch), seen in zip(recorder.batches, recorder.forward_inputs, strict=True):
        mixed = mix_inputs([batch["visual"], batch["audio"]], batch["label"], 0.5, step_generator(7, step))
        lambdas.add(mixed.lam)
        for x_seen, x_expected in zip(seen, mixed.inputs, strict=True):
            torch.testing.assert_close(x_seen, x_expected)
    assert len(lambdas) == 6, "each step draws its own lambda"
    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(forward_accuracy(model, tensor_data.val_dataloader()))


# --------------------------------------------------------------------------- CRMT-Mix
def direct_mixup_margin(scores, labels_a, labels_b, lam) -> float:
    """The paper's CRMT-Mix margin with raw exponentials, one sample at a time."""
    values = []
    for i, (ya, yb) in enumerate(zip(labels_a.tolist(), labels_b.tolist(), strict=True)):
        total = 0.0
        for m in range(scores.shape[0]):
            s = scores[m, i].tolist()
            target = math.exp(lam * s[ya] + (1 - lam) * s[yb])
            total += sum(math.exp(s[k]) for k in range(len(s)) if k not in (ya, yb)) / target
        values.append(math.log(total))
    return sum(values) / len(values)


def test_mixup_margin_matches_the_direct_formula_and_handles_equal_labels():
    torch.manual_seed(0)
    scores = torch.randn(2, 4, 5, dtype=torch.float64)
    labels_a = torch.tensor([0, 3, 1, 4])
    labels_b = torch.tensor([2, 3, 0, 1])  # sample 1 mixes two clips of the same class
    value = mixup_margin_regularizer(scores, labels_a, labels_b, 0.3)
    assert value.item() == pytest.approx(direct_mixup_margin(scores, labels_a, labels_b, 0.3), rel=1e-12)
    with pytest.raises(ValueError, match="3 classes"):
        mixup_margin_regularizer(scores[:, :, :2], labels_a % 2, labels_b % 2, 0.3)


def test_mixup_margin_is_finite_and_correct_for_huge_scores():
    scores = torch.tensor([[[1e4, 1e4 - 1.0, 1e4 - 3.0, -1e4]], [[1e4 - 2.0, 1e4, 1e4 + 1.0, 0.0]]])
    value = mixup_margin_regularizer(scores, torch.tensor([0]), torch.tensor([1]), 0.25)
    assert torch.isfinite(value)
    # targets: 0.25 * 1e4 + 0.75 * (1e4 - 1) = 1e4 - 0.75 and 0.25 * (1e4 - 2) + 0.75 * 1e4 = 1e4 - 0.5
    expected = math.log(math.exp(-3.0 + 0.75) + math.exp(1.0 + 0.5))
    assert value.item() == pytest.approx(expected, abs=1e-4)


def test_crmt_mix_step1_loss_is_mixed_ce_plus_mixed_margin_and_fit_reaches_step2(tmp_path, tensor_data):
    seed_everything(0)
    model = CRMTMixup(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, rho=1.5, step1_epochs=1, step2_epochs=1, seed=5)
    batch = first_batch(tensor_data)
    model.eval()
    loss, parts = model.step1_loss(batch)
    mixed = mix_inputs([batch["visual"], batch["audio"]], batch["label"], 1.0, step_generator(5, 0))
    output = model(mixed.inputs)
    expected_margin = mixup_margin_regularizer(output.scores, mixed.labels_a, mixed.labels_b, mixed.lam)
    torch.testing.assert_close(parts["margin"], expected_margin)
    torch.testing.assert_close(loss, mixed.cross_entropy(output.logits) + 1.5 * expected_margin)

    model.train()
    validated = StateAtValidationEnd()
    trainer = make_trainer(2, tmp_path, [validated])
    trainer.fit(model, datamodule=tensor_data)
    assert int(model.phase) == 2 and (model.tau > 0).all()
    model.load_state_dict(validated.state)
    accuracy, radius = orthogonal_validation_by_hand(model, tensor_data.val_dataloader())
    assert radius > 0, "the check needs some certified sample"
    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(accuracy)
    assert trainer.callback_metrics["val/certified_radius"].item() == pytest.approx(radius, rel=1e-4, abs=1e-7)


# --------------------------------------------------------------------------- OGM-GE
def test_uni_modal_confidence_uses_the_head_split_with_half_the_bias():
    torch.manual_seed(0)
    head = ConcatFusion([4, 6], 3)
    torch.nn.init.normal_(head.linear.bias)
    features = [torch.randn(5, 4), torch.randn(5, 6)]
    labels = torch.tensor([0, 2, 1, 1, 0])
    weight, bias = head.linear.weight, head.linear.bias
    visual = features[0] @ weight[:, :4].T + bias / 2
    audio = features[1] @ weight[:, 4:].T + bias / 2
    expected = torch.stack([s.softmax(1)[torch.arange(5), labels].sum() for s in (visual, audio)])
    torch.testing.assert_close(uni_modal_confidence(head(features).scores, bias, labels), expected)


def test_modulation_coefficient_slows_only_the_dominant_modality():
    torch.testing.assert_close(
        modulation_coefficients(torch.tensor([3.0, 1.0]), 0.5), torch.tensor([1 - math.tanh(1.5), 1.0])
    )
    torch.testing.assert_close(
        modulation_coefficients(torch.tensor([1.0, 4.0]), 0.2), torch.tensor([1.0, 1 - math.tanh(0.8)])
    )


class GradientRecorder(Callback):
    """Per (epoch, batch): the gradients before OGM's hook (callbacks run first) and at the batch's end."""

    def __init__(self) -> None:
        self.before: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.after: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.coefficients: dict[tuple[int, int], torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.key = (trainer.current_epoch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before[self.key] = gradients(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[self.key] = gradients(pl_module)
        self.coefficients[self.key] = pl_module.coefficients.clone()


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def conv_weight(name: str, grad: torch.Tensor) -> bool:
    return name.startswith("encoders.") and grad.dim() == 4


def run_ogm(tmp_path, tensor_data, epochs: int, **settings) -> GradientRecorder:
    seed_everything(0)
    model = OGMGE(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=partial(torch.optim.SGD, lr=0.1), alpha=2.0, **settings)
    recorder = GradientRecorder()
    make_trainer(epochs, tmp_path, [recorder], limit_train_batches=1, limit_val_batches=1).fit(
        model, datamodule=tensor_data
    )
    return recorder


def test_ogm_scales_only_conv_weight_gradients_of_the_dominant_modality_inside_the_window(tmp_path, tensor_data):
    recorder = run_ogm(tmp_path, tensor_data, 2, ogm_ge=False, modulation_starts=1, modulation_ends=1)
    outside, inside = (0, 0), (1, 0)
    for name, grad in recorder.before[outside].items():
        assert torch.equal(recorder.after[outside][name], grad), f"{name} changed outside the window"

    coefficients = recorder.coefficients[inside]
    assert sorted(coefficients.tolist())[1] == 1.0 and coefficients.min() < 1.0, coefficients
    modulated = 0
    for name, grad in recorder.before[inside].items():
        after = recorder.after[inside][name]
        if conv_weight(name, grad):
            k = coefficients[0 if name.startswith("encoders.visual.") else 1]
            torch.testing.assert_close(after, k * grad)
            modulated += int(k < 1)
        else:
            assert torch.equal(after, grad), f"{name} is not an encoder conv weight and must stay unmodulated"
    assert modulated > 10


def test_ogm_ge_noise_has_the_std_of_the_unmodulated_gradient(tmp_path, tensor_data):
    recorder = run_ogm(tmp_path, tensor_data, 1, ogm_ge=True)
    key = (0, 0)
    coefficients = recorder.coefficients[key]
    standardised = []
    for name, grad in recorder.before[key].items():
        after = recorder.after[key][name]
        if conv_weight(name, grad):
            k = coefficients[0 if name.startswith("encoders.visual.") else 1]
            standardised.append(((after - k * grad) / (grad.std() + 1e-8)).flatten())
        else:
            assert torch.equal(after, grad), name
    noise = torch.cat(standardised)
    assert noise.numel() > 50_000
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1.0) < 0.02


# --------------------------------------------------------------------------- GB
def test_blend_weights_are_clipped_gain_over_squared_overfitting_normalised():
    weights = blend_weights(torch.tensor([0.2, -0.1, 0.4]), torch.tensor([0.1, 0.3, -0.2]), epsilon=1e-12)
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 0.0, 1 / 3]))
    assert blend_weights(torch.tensor([-0.1, 0.0]), torch.tensor([0.1, 0.2]), 1e-6) is None
    guarded = blend_weights(torch.tensor([0.1, 0.1]), torch.tensor([0.0, 0.5]), 1e-6)
    assert torch.isfinite(guarded).all() and guarded[0] > 0.99


def test_gb_estimates_weights_every_super_epoch_from_forks_and_blends_the_branch_losses(
    tmp_path, tensor_data, monkeypatch
):
    seed_everything(0)
    model = GradientBlending(
        num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, super_epoch=2, estimation_epochs=1, holdout_fraction=0.25
    )
    estimates = []
    estimate = model.estimate_blend

    def spy():
        state = {k: v.clone() for k, v in model.state_dict().items()}
        weights = estimate()
        unchanged = all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        estimates.append((model.current_epoch, weights.clone(), unchanged))
        return weights

    monkeypatch.setattr(model, "estimate_blend", spy)
    make_trainer(3, tmp_path).fit(model, datamodule=tensor_data)

    assert [epoch for epoch, _, _ in estimates] == [0, 2]
    assert all(unchanged for _, _, unchanged in estimates), "the forks must not touch the model"
    torch.testing.assert_close(model.blend, estimates[-1][1])
    assert (model.blend >= 0).all() and model.blend.sum().item() == pytest.approx(1.0)
    assert not torch.allclose(model.blend, torch.full((3,), 1 / 3))
    assert model.holdout.tolist() == model.holdout_indices(24).tolist() and len(model.holdout) == 6

    batch = next(iter(tensor_data.train_dataloader()))
    model.eval()
    loss, parts = model.blended_loss(batch)
    kept = torch.tensor([i not in set(model.holdout.tolist()) for i in batch["index"].tolist()])
    features = raw_features(model, batch)
    branch_logits = [
        model.unimodal_heads[0](features[0]),
        model.unimodal_heads[1](features[1]),
        model.head(features).logits,
    ]
    ce = [F.cross_entropy(logits[kept], batch["label"][kept]) for logits in branch_logits]
    for name, expected in zip(("visual", "audio", "fused"), ce, strict=True):
        torch.testing.assert_close(parts[f"ce_{name}"], expected)
    torch.testing.assert_close(loss, sum(w * c for w, c in zip(model.blend, ce, strict=True)))


class PixelTensorData(TensorAVDataModule):
    """Visual inputs as uint8 pixels, normalised on the device by the data module's transfer hook (as the clip
    data modules do); counts the batches each of its transfer hooks saw."""

    def __init__(self) -> None:
        super().__init__()
        for dataset in (self.train_set, self.val_set):
            dataset.visual = (torch.sigmoid(dataset.visual) * 255).round().to(torch.uint8)
        self.hook_calls = {"before": 0, "transfer": 0, "after": 0}

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.hook_calls["before"] += 1
        return batch

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.hook_calls["transfer"] += 1
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.hook_calls["after"] += 1
        return {**batch, "visual": (batch["visual"].float() / 255 - 0.5) / 0.25}


def test_gb_forks_get_their_batches_through_the_run_data_module_hooks_as_the_run_does(tmp_path, monkeypatch):
    """The forks' Trainer fits on a ForkData: a subset of the run's training samples whose batches pass through the
    run's data module's transfer hooks, run by Lightning (the fork itself does nothing to its batches)."""
    seed_everything(0)
    data = PixelTensorData()
    seen = []
    step = BranchFit.training_step

    def spy(fork, batch, batch_idx):
        fork_data = fork.trainer.datamodule
        seen.append((type(fork_data), fork_data.source, batch["visual"].dtype, len(fork_data.train_dataloader().dataset)))
        return step(fork, batch, batch_idx)

    monkeypatch.setattr(BranchFit, "training_step", spy)
    model = GradientBlending(
        num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, super_epoch=1, estimation_epochs=1,
        holdout_fraction=0.25,
    )
    make_trainer(1, tmp_path, limit_val_batches=0).fit(model, datamodule=data)
    # 3 forks x 1 epoch x 18 training-part samples in batches of 8
    assert seen == [(ForkData, data, torch.float32, 18)] * 9
    # the Trainers' loops: the run's 3 training batches and the forks' 9; the run's strategy also moves (transfer and
    # after-transfer hooks) the batches of the forks' losses: 1 held-out and 1 probe batch, before and after each fit
    assert data.hook_calls == {"before": 3 + 9, "transfer": 3 + 9 + 3 * 2 * 2, "after": 3 + 9 + 3 * 2 * 2}


# --------------------------------------------------------------------------- PMR
def class_means(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.stack([features[labels == k].mean(0) for k in range(classes)])


def test_pmr_prototypes_are_class_means_with_momentum_and_pce_only_for_the_weaker_modality(tmp_path, tensor_data):
    seed_everything(0)
    model = PrototypicalModalRebalance(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, alpha=0.7, momentum=0.25)
    trainer = make_trainer(2, tmp_path)
    trainer.fit(model, datamodule=tensor_data)
    model.eval()

    batches = list(tensor_data.train_dataloader())
    labels = torch.cat([b["label"] for b in batches])
    with torch.no_grad():
        features = [torch.cat(f) for f in zip(*(raw_features(model, b) for b in batches), strict=True)]
    model.update_prototypes(batches, momentum=0.0)
    first = [class_means(f, labels, 3) for f in features]
    for m in range(2):
        torch.testing.assert_close(model.prototypes(m), first[m])

    without_class_2 = [{k: v[b["label"] != 2] for k, v in b.items()} for b in batches]
    model.update_prototypes(without_class_2, momentum=model.hparams.momentum)
    for m in range(2):
        means = class_means(features[m][labels != 2], labels[labels != 2], 2)
        torch.testing.assert_close(model.prototypes(m)[:2], 0.75 * means + 0.25 * first[m][:2])
        torch.testing.assert_close(model.prototypes(m)[2], first[m][2])

    batch = first_batch(tensor_data)
    with torch.no_grad():
        loss, parts = model.pmr_loss(batch)
        phi = raw_features(model, batch)
        ce = F.cross_entropy(model.head(phi).logits, batch["label"])
        distances = [torch.cdist(phi[m], model.prototypes(m)) for m in range(2)]
        pce = [F.cross_entropy(-d, batch["label"]) for d in distances]
        confidence = [(-d).softmax(1)[torch.arange(len(d)), batch["label"]].sum() for d in distances]
    weaker = int(torch.stack(confidence).argmin())
    assert int(parts["weaker"]) == weaker
    for m, name in enumerate(("visual", "audio")):
        torch.testing.assert_close(parts[f"pce_{name}"], pce[m])
    torch.testing.assert_close(loss, ce + 0.7 * pce[weaker])
    assert abs((ce + 0.7 * pce[1 - weaker]) - loss) > 1e-3, "the stronger modality's PCE must not be in the loss"

    model.hparams.modulation_ends = trainer.current_epoch - 1
    torch.testing.assert_close(model.pmr_loss(batch)[0], ce)


def test_prototype_logits_have_finite_gradients_at_zero_distance():
    features = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    prototypes = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    logits = prototype_logits(features, prototypes)
    torch.testing.assert_close(logits.detach(), -torch.cdist(features.detach(), prototypes), atol=1e-3, rtol=0)
    logits.sum().backward()
    assert torch.isfinite(features.grad).all()


# --------------------------------------------------------------------------- MSEFM
def test_ista_codes_satisfy_the_lasso_optimality_conditions():
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    features = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    step = ista_step_size(memory)
    assert (step * torch.linalg.eigvalsh(memory @ memory.T)[-1]).item() == pytest.approx(1.0)
    codes = ista_codes(features, memory, 0.1, step, 20_000)
    correlation = (features - codes @ memory) @ memory.T  # minus the gradient of the smooth part
    active = codes != 0
    assert active.any() and (~active).any(), "the check needs both zero and nonzero codes"
    torch.testing.assert_close(correlation[active], 0.1 * codes[active].sign(), atol=1e-7, rtol=0)
    assert (correlation[~active].abs() <= 0.1 + 1e-7).all()


class EmbeddingsAtSwitch(Callback):
    """Eval-mode embeddings of the whole training set at the first step-2 batch (before any step-2 update)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 0:
            pl_module.eval()
            with torch.no_grad():
                batches = list(trainer.datamodule.train_dataloader())
                self.embeddings = [
                    torch.cat(f) for f in zip(*(raw_features(pl_module, b) for b in batches), strict=True)
                ]
            pl_module.train()


def test_msefm_minsim_then_exfmem_in_training_and_evaluation(tmp_path, tensor_data):
    seed_everything(0)
    model = MinSimExFMem(
        num_classes=3,
        input_shapes=SHAPES,
        encoder_width=4,
        optimizer=ADAM,
        similarity_weight=0.5,
        step1_epochs=1,
        step2_epochs=1,
        memory_size=16,
        ista_iterations=30,
    )
    batch = first_batch(tensor_data)
    model.eval()
    loss, parts = model.minsim_loss(batch)
    phi = raw_features(model, batch)
    cosine = F.cosine_similarity(phi[0], phi[1], dim=1).mean()
    assert abs(cosine.item()) > 1e-3
    torch.testing.assert_close(parts["cosine"], cosine)
    torch.testing.assert_close(loss, F.cross_entropy(model.head(phi).logits, batch["label"]) + 0.5 * cosine)
    assert model.encoder_lipschitz_bound(0) > 0

    model.train()
    switch = EmbeddingsAtSwitch()
    make_trainer(2, tmp_path, [switch]).fit(model, datamodule=tensor_data)
    assert model.in_step2
    for m in range(2):
        bank = model.memory(m)
        nearest = torch.cdist(bank, switch.embeddings[m]).min(dim=1).values
        assert nearest.max() < 1e-4, "every bank row must be a training embedding of the step-1 model"
        assert torch.unique(bank, dim=0).shape[0] == 16

    model.eval()
    with torch.no_grad():
        logits = model(model.inputs(batch)).logits
        phi = raw_features(model, batch)
        blended = []
        for m in range(2):
            memory = model.memory(m)
            codes = ista_codes(phi[m], memory, 0.1, ista_step_size(memory), 30)
            blended.append(0.5 * codes @ memory + 0.5 * phi[m])
    torch.testing.assert_close(logits, model.head(blended).logits)
    assert not torch.allclose(logits, model.head(phi).logits, atol=1e-3)
    with pytest.raises(NotImplementedError, match="ISTA"):
        model.encoder_lipschitz_bound(0)


# --------------------------------------------------------------------------- MMT / CRMT-MMT
MMT_SETTINGS = {"embed_dim": 16, "stream_depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 4, "mlp_ratio": 2}


def test_mmt_head_sees_only_the_class_tokens_of_the_cross_modal_layers():
    torch.manual_seed(0)
    model = MultiModalTransformer(3, SHAPES, dropout=0.0, **MMT_SETTINGS).eval()
    assert not model.certifiable
    batch = first_batch(TensorAVDataModule(batch_size=4))
    inputs = model.inputs(batch)
    lengths = [model.encoders[name].num_tokens for name in model.modalities]
    assert lengths == [1 + 2 * 4 * 4, 1 + 3 * 4]
    captured = {}
    model.head.register_forward_hook(lambda module, args, output: captured.update(head_inputs=args[0]))
    model.cross_modal.norm.register_forward_hook(lambda module, args, output: captured.update(tokens=output))
    with torch.no_grad():
        logits = model(inputs).logits
    class_positions = [0, lengths[0]]
    for m, position in enumerate(class_positions):
        assert torch.equal(captured["head_inputs"][m], captured["tokens"][:, position])

    def perturb(positions):
        def hook(module, args, output):
            changed = output.clone()
            changed[:, positions] += torch.randn_like(changed[:, positions])
            return changed

        return model.cross_modal.layers.register_forward_hook(hook)

    others = [p for p in range(sum(lengths)) if p not in class_positions]
    handle = perturb(others)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).logits, logits)
    handle.remove()
    handle = perturb(class_positions)
    with torch.no_grad():
        assert not torch.allclose(model(inputs).logits, logits)
    handle.remove()


@pytest.mark.parametrize("strategy", [MultiModalTransformer, CRMTMultiModalTransformer])
def test_transformers_lower_their_training_loss(strategy):
    torch.manual_seed(0)
    model = strategy(3, SHAPES, optimizer=partial(torch.optim.AdamW, lr=3e-3), dropout=0.0, **MMT_SETTINGS)
    batch = next(iter(TensorAVDataModule(batch_size=12).train_dataloader()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_of() -> torch.Tensor:
        if isinstance(model, CRMTMultiModalTransformer):
            return model.step1_loss(batch)[0]
        return F.cross_entropy(model(model.inputs(batch)).logits, batch["label"])

    losses = []
    for _ in range(12):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_mmt_and_crmt_mmt_fit_and_crmt_mmt_refuses_a_step_2(tmp_path, tensor_data):
    seed_everything(0)
    mmt = MultiModalTransformer(3, SHAPES, optimizer=partial(torch.optim.AdamW, lr=3e-3), **MMT_SETTINGS)
    trainer = make_trainer(1, tmp_path)
    trainer.fit(mmt, datamodule=tensor_data)
    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(forward_accuracy(mmt, tensor_data.val_dataloader()))

    crmt_mmt = CRMTMultiModalTransformer(
        3, SHAPES, optimizer=partial(torch.optim.AdamW, lr=3e-3), step1_epochs=1, **MMT_SETTINGS
    )
    trainer = make_trainer(1, tmp_path)
    trainer.fit(crmt_mmt, datamodule=tensor_data)
    assert int(crmt_mmt.phase) == 1 and "train/margin" in trainer.callback_metrics
    with pytest.raises(ValueError, match="max_epochs"):
        make_trainer(2, tmp_path).fit(crmt_mmt, datamodule=tensor_data)
    with pytest.raises(ValueError, match="step2_epochs must be 0"):
        CRMTMultiModalTransformer(3, SHAPES, step2_epochs=1, **MMT_SETTINGS)
