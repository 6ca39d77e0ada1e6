"""Model-level certificates: the Lipschitz estimator, eta of the JT head, sound bounds, the audit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crmt.robustness.attacks import L2PGD, ascent_direction, clean_pass, missing_modality, predict
from crmt.robustness.audit import audit_radii
from crmt.robustness.certificates import LipschitzEstimator, sound_pair_lipschitz
from crmt.robustness.certify import certified_radius, unimodal_radius
from crmt.robustness.evaluation import RobustnessEvaluator, RobustnessSettings
from crmt.robustness.sound import conv_operator_norm_bound, encoder_lipschitz_upper_bound
from crmt.strategies import CRMTJointTraining, JointTraining
from helpers import validation_batch


class LinearEncoder(nn.Module):
    """phi(x) = A flatten(x) + c: every Lipschitz constant downstream is known exactly."""

    def __init__(self, shape: list[int], out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(shape), out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class LinearJT(JointTraining):
    def build_encoders(self, input_shapes, width):
        return nn.ModuleDict({name: LinearEncoder(shape, 8) for name, shape in input_shapes.items()})


class LinearCRMT(CRMTJointTraining):
    def build_encoders(self, input_shapes, width):
        return nn.ModuleDict({name: LinearEncoder(shape, 8) for name, shape in input_shapes.items()})


SHAPES = {"visual": [3, 2, 4, 4], "audio": [1, 6, 5]}


def random_inputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=generator) for shape in SHAPES.values()]


def input_maps(model) -> list[torch.Tensor]:
    """The composite linear map x^(m) -> s^(m) = W^(m) A_m x^(m) + ..., as (K, input size)."""
    return [w.detach() @ model.encoders[name].linear.weight.detach()
            for name, w in zip(model.modalities, model.head.modality_weights())]


def test_estimator_is_exact_for_linear_encoders_and_radii_match_the_closed_form():
    torch.manual_seed(0)
    for model in (LinearJT(4, SHAPES), LinearCRMT(4, SHAPES)):
        model.eval()
        if isinstance(model, LinearCRMT):
            with torch.no_grad():
                model.head.integration.uniform_(0.5, 1.5)
        estimator = LipschitzEstimator(model)
        inputs = random_inputs(16)
        estimator.update(inputs)
        table = estimator.pair_lipschitz()
        maps = input_maps(model)
        integration = model.head.integration_weights().detach()
        for m in range(2):
            rows = integration[m][:, None] * maps[m]
            pair_norms = (rows[:, None, :] - rows[None, :, :]).norm(dim=-1)
            if isinstance(model, LinearCRMT):  # Theorem 3.5: |a_y| tau_y + |a_j| tau_j, tau_k = ||row k||
                tau = maps[m].norm(dim=1)
                expected = integration[m].abs()[:, None] * tau[:, None] + integration[m].abs()[None, :] * tau[None, :]
            else:  # Theorem 3.3: the exact norm of the pair's gradient
                expected = pair_norms
            torch.testing.assert_close(table[m], expected, rtol=1e-4, atol=1e-5)

        if isinstance(model, LinearJT):
            # exact table: the uni-modal radius is the exact distance to the nearest decision boundary,
            # so stepping just past it along the boundary's normal flips the prediction
            logits = predict_logits(model, inputs)
            labels = logits.argmax(dim=1)
            for m in range(2):
                radius = unimodal_radius(logits, labels, table, m)
                margins = logits.gather(1, labels[:, None]) - logits
                for i in range(4):
                    y = int(labels[i])
                    rows = maps[m]
                    distances = [(margins[i, j] / (rows[y] - rows[j]).norm()).item() for j in range(4) if j != y]
                    torch.testing.assert_close(radius[i].item(), min(distances), rtol=1e-4, atol=1e-6)
                    j = min((j for j in range(4) if j != y), key=lambda j: margins[i, j] / (rows[y] - rows[j]).norm())
                    normal = (rows[j] - rows[y]) / (rows[j] - rows[y]).norm()
                    moved = [x[i : i + 1].clone() for x in inputs]
                    moved[m] = moved[m] + (radius[i] * 1.001 * normal).view_as(moved[m])
                    assert predict(model, moved).item() != y


def predict_logits(model, inputs):
    with torch.no_grad():
        return model(inputs).logits


def test_jt_eta_equals_integration_factor_times_tau_computed_by_hand(trained_jt, data):
    """method.md §1: eta_j^(m) = c_j^(m) tau_j^(m), c = ||W_y - W_j||, tau the Lipschitz constant of zeta_j."""
    model = trained_jt
    inputs, _ = validation_batch(data, size=6)
    estimator = LipschitzEstimator(model)
    estimator.update(inputs)
    table = estimator.pair_lipschitz()
    for m, (name, weight) in enumerate(zip(model.modalities, model.head.modality_weights())):
        weight = weight.detach()
        for y in range(3):
            for j in range(3):
                if y == j:
                    continue
                c = (weight[y] - weight[j]).norm()
                tau = 0.0
                for i in range(6):  # one sample, one class pair at a time, on its own graph
                    x = inputs[m][i : i + 1].clone().requires_grad_(True)
                    zeta = (model.encoders[name](x) @ (weight[y] - weight[j])) / c
                    (gradient,) = torch.autograd.grad(zeta.sum(), x)
                    tau = max(tau, gradient.norm().item())
                torch.testing.assert_close(table[m, y, j].item(), (c * tau).item(), rtol=1e-4, atol=1e-6)


def test_estimator_clean_pass_equals_the_attacks_clean_pass_and_folds_the_batch(trained_jt, trained_crmt, data):
    """The loss gradients rebuilt from the score gradients are those of a backward pass of their own."""
    inputs, labels = validation_batch(data, size=6)
    for model in (trained_jt, trained_crmt):
        estimator = LipschitzEstimator(model)
        shared = estimator.clean_pass(inputs, labels)
        separate = clean_pass(model, inputs, labels)
        torch.testing.assert_close(shared.logits, separate.logits)
        for a, b in zip(shared.gradients + shared.features, separate.gradients + separate.features):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        alone = LipschitzEstimator(model)
        alone.update(inputs)
        torch.testing.assert_close(estimator.pair_lipschitz(), alone.pair_lipschitz())
        assert estimator.samples == alone.samples == 6


def test_estimator_leaves_parameter_gradients_untouched(trained_crmt, data):
    LipschitzEstimator(trained_crmt).update(validation_batch(data, 4)[0])
    assert all(p.grad is None for p in trained_crmt.parameters())


def power_iteration(operator, shape, iterations: int = 300) -> float:
    """Largest singular value of a linear ``operator`` on inputs of ``shape``, from below."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    for _ in range(iterations):
        x = x.requires_grad_(True)
        y = operator(x)
        (x,) = torch.autograd.grad(y, x, grad_outputs=y)  # A^T A x
        x = x / x.norm()
    return operator(x).norm().item()


def test_conv_bound_is_exact_for_circular_and_never_below_zero_padded_convolutions():
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    circular = power_iteration(lambda x: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), weight), (1, 3, 8, 8))
    torch.testing.assert_close(conv_operator_norm_bound(weight, (8, 8), (0, 0)), circular, rtol=1e-3, atol=0)
    for stride in (1, 2):
        for size in ((8, 8), (7, 12)):
            true_norm = power_iteration(lambda x: F.conv2d(x, weight, stride=stride, padding=1), (1, 3, *size))
            assert conv_operator_norm_bound(weight, size, (1, 1)) >= true_norm * (1 - 1e-6)


def test_sound_encoder_bound_is_above_every_observed_gradient(trained_jt, data):
    encoder = trained_jt.encoders["audio"]
    bound = encoder_lipschitz_upper_bound(encoder, data.input_shapes["audio"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, *data.input_shapes["audio"], generator=generator).requires_grad_(True)
    directions = F.normalize(torch.randn(16, encoder.out_dim, generator=generator), dim=1)
    (gradient,) = torch.autograd.grad((encoder(x) * directions).sum(), x)
    assert gradient.flatten(1).norm(dim=1).max().item() <= bound
    pairs = torch.randn(2, 8, *data.input_shapes["audio"], generator=generator)
    with torch.no_grad():
        ratios = (encoder(pairs[0]) - encoder(pairs[1])).norm(dim=1) / (pairs[0] - pairs[1]).flatten(1).norm(dim=1)
    assert ratios.max().item() <= bound


def test_sound_table_dominates_the_estimate_and_no_attack_beats_sound_radii(trained_jt, trained_crmt, data):
    inputs, labels = validation_batch(data)
    for model in (trained_jt, trained_crmt):
        estimator = LipschitzEstimator(model)
        estimator.update(inputs)
        sound = sound_pair_lipschitz(model)
        estimated = estimator.pair_lipschitz()
        off_diagonal = ~torch.eye(3, dtype=torch.bool)
        assert (sound[:, off_diagonal] >= estimated[:, off_diagonal]).all()
        logits = predict_logits(model, inputs)
        radius = certified_radius(logits, labels, sound)
        eligible, violated = audit_radii(model, inputs, labels, radius, steps=20, fraction=1.0)
        assert eligible.any() and not violated.any()
        far = L2PGD(50.0, steps=2)(model, inputs, labels)  # a warm start from far outside is rescaled into each radius
        eligible, violated = audit_radii(model, inputs, labels, radius, steps=5, fraction=1.0, start=far)
        assert eligible.any() and not violated.any()


def test_ascent_direction_is_the_rescaled_cross_entropy_gradient_and_never_vanishes():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), logits)
    direction = ascent_direction(logits, labels)
    torch.testing.assert_close(F.normalize(direction, dim=1), F.normalize(gradient, dim=1))
    huge = torch.tensor([[400.0, 0.0, -50.0]])
    assert (ascent_direction(huge, torch.tensor([0])).abs().sum() > 0).item()


def test_curves_continue_on_both_sides_of_the_table_budget_and_missing_matches_a_plain_forward(trained_jt, data):
    inputs, labels = validation_batch(data)
    settings = RobustnessSettings(curve_radii=(0.25, 0.5, 1.0, 2.0, 4.0), audit_samples=0, certify=False)
    evaluator = RobustnessEvaluator(trained_jt, settings)
    evaluator.update(inputs, labels)
    results = evaluator.finalize()
    records = results.records
    for key, table in (("multimodal", "pgd"), ("visual", "pgd_visual"), ("audio", "pgd_audio")):
        curve = records[f"curve_{key}"]
        assert curve.shape == (labels.shape[0], 5)
        assert not (curve & ~records["clean"][:, None]).any(), "only clean-correct samples can withstand an attack"
        assert not (curve[:, 1:] & ~curve[:, :-1]).any(), "a sample broken at one radius is broken at every larger one"
        budget = settings.multimodal_eps if key == "multimodal" else settings.unimodal_eps
        assert torch.equal(curve[:, settings.curve_radii.index(budget)], records[table]), "the table's attack is reused"
    assert results.curves()["audio"][-1] < results.curves()["audio"][0], "the largest radius breaks some samples"
    for m, name in enumerate(trained_jt.modalities):
        expected = (predict(trained_jt, missing_modality(inputs, m)) == labels) & records["clean"]
        assert torch.equal(records[f"missing_{name}"], expected)


def test_evaluation_reports_an_audit_rate_in_unit_interval_and_every_table_column(trained_jt, data):
    inputs, labels = validation_batch(data)
    evaluator = RobustnessEvaluator(trained_jt, RobustnessSettings(curve_radii=(0.5, 1.0), audit_samples=16))
    evaluator.update(inputs, labels)
    results = evaluator.finalize()
    metrics = results.metrics()
    assert 0.0 <= metrics["audit"]["violation_rate"] <= 1.0 and metrics["audit"]["attacked"] == 16
    assert set(metrics["accuracy"]) == {
        "clean", "fgm", "pgd", "fgm_visual", "pgd_visual", "fgm_audio", "pgd_audio", "missing_visual", "missing_audio"
    }
    clean = metrics["accuracy"]["clean"]
    assert metrics["accuracy"]["pgd"] <= metrics["accuracy"]["fgm"] <= clean
    assert metrics["curves"]["radii"] == [0.0, 0.5, 1.0] and metrics["curves"]["audio"][0] == clean
    assert metrics["curves"]["multimodal"][1] == metrics["accuracy"]["pgd"], "the table's budget is reused"
    assert metrics["curves"]["multimodal"][2] <= metrics["curves"]["multimodal"][1]
    radius = results.records["radius"]
    assert (radius[~results.records["clean"]] == 0).all() and (radius[results.records["clean"]] >= 0).all()
    for m in results.modalities:  # a uni-modal certificate is never smaller than the multi-modal one
        assert (results.records[f"radius_{m}"] >= radius - 1e-6).all()
    assert metrics["certified"]["multimodal"]["certified_accuracy"][0] == pytest.approx(clean)


def test_crmt_radii_use_the_common_protocol_and_its_own_tau_beside_it(trained_crmt, data):
    """Every model's ``radius`` comes from the Lipschitz table estimated over the evaluated samples
    (comparable across strategies); CRMT's training-set tau~ gives ``model_radius`` beside it."""
    inputs, labels = validation_batch(data)
    index = torch.arange(100, 100 + labels.shape[0])
    evaluator = RobustnessEvaluator(trained_crmt, RobustnessSettings(curve_radii=(), audit_samples=0, sound_certificate=False))
    evaluator.update(inputs, labels, index)
    results = evaluator.finalize()

    estimator = LipschitzEstimator(trained_crmt)
    estimator.update(inputs)
    logits = predict_logits(trained_crmt, inputs)
    expected = certified_radius(logits, labels, estimator.pair_lipschitz())
    own = certified_radius(logits, labels, trained_crmt.known_pair_lipschitz())
    assert torch.allclose(results.records["radius"], expected, atol=1e-5)
    assert torch.allclose(results.records["model_radius"], own, atol=1e-5)
    assert not torch.allclose(expected, own), "the two populations give different constants"
    metrics = results.metrics()
    assert metrics["certified"]["multimodal"]["mean"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics["certified_model"]["multimodal"]["mean"] == pytest.approx(own.mean().item(), rel=1e-5)
    assert "training set" in metrics["certified_model"]["lipschitz"]

    per_sample = results.per_sample()
    assert per_sample["index"] == index.tolist() and per_sample["label"] == labels.tolist()
    assert per_sample["correct"]["clean"] == (logits.argmax(dim=1) == labels).int().tolist()
    for key, value in metrics["accuracy"].items():
        assert sum(per_sample["correct"][key]) / len(labels) == pytest.approx(value)


def predict_logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).logits
