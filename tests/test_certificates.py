"""Model-level certificates: the Lipschitz estimator, eta of the JT head, sound bounds, the audit;
the evaluation's typed results (threats, eta ratios of any pair, metrics.json round trip)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crmt.models.layer_bounds import conv_operator_norm_bound
from crmt.robustness.attack import clean_pass, missing_modality, predict
from crmt.robustness.attack_losses import ascent_direction
from crmt.robustness.ball import Ball
from crmt.robustness.pgd import L2PGD
from crmt.robustness.suite import SUITES, suite_attacks
from crmt.robustness.audit import audit_radii
from crmt.robustness.certificates import LipschitzEstimator, sound_pair_lipschitz
from crmt.robustness.certify import certified_radius, unimodal_radius
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.records import CertifiedRadii, RobustnessResults
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.report import write_report
from crmt.robustness.results import AccuracyCurves, RobustnessMetrics
from crmt.robustness.threats import Scope, Threat
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
    bound = encoder.lipschitz_upper_bound(data.input_shapes["audio"])
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
        suite = suite_attacks(SUITES["quick"], 3)
        outcome = audit_radii(model, inputs, labels, radius, steps=20, fraction=1.0, suite=suite,
                              generator=torch.Generator().manual_seed(0))
        assert outcome.eligible.any() and not outcome.violated.any() and not outcome.violated_adaptive.any()
        far = L2PGD(steps=2)(model, inputs, labels, Ball.around(inputs, 50.0)).adversarial  # rescaled into each radius
        outcome = audit_radii(model, inputs, labels, radius, steps=5, fraction=1.0, start=far)
        assert outcome.eligible.any() and not outcome.violated.any() and outcome.violated_adaptive is None


def test_ascent_direction_is_the_rescaled_cross_entropy_gradient_and_never_vanishes():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), logits)
    direction = ascent_direction(logits, labels)
    torch.testing.assert_close(F.normalize(direction, dim=1), F.normalize(gradient, dim=1))
    huge = torch.tensor([[400.0, 0.0, -50.0]])
    assert (ascent_direction(huge, torch.tensor([0])).abs().sum() > 0).item()


VISUAL, AUDIO = Scope(("visual",)), Scope(("audio",))
BOTH = Scope(("visual", "audio"))


def test_curves_continue_on_both_sides_of_the_table_budget_and_missing_matches_a_plain_forward(trained_jt, data):
    inputs, labels = validation_batch(data)
    settings = RobustnessSettings(curve_radii=(0.25, 0.5, 1.0, 2.0, 4.0), audit_samples=0, certify=False)
    evaluator = RobustnessEvaluator(trained_jt, settings)
    evaluator.update(inputs, labels)
    results = evaluator.finalize()
    clean = results.correct[Threat("clean")]
    for scope, budget in ((BOTH, settings.multimodal_eps), (VISUAL, settings.unimodal_eps), (AUDIO, settings.unimodal_eps)):
        curve = results.curves[scope]
        assert curve.shape == (labels.shape[0], 5)
        assert not (curve & ~clean[:, None]).any(), "only clean-correct samples can withstand an attack"
        assert not (curve[:, 1:] & ~curve[:, :-1]).any(), "a sample broken at one radius is broken at every larger one"
        table = results.correct[Threat("pgd", scope.modalities, budget)]
        assert torch.equal(curve[:, settings.curve_radii.index(budget)], table), "the table's attack is reused"
    audio = results.metrics().curves.accuracy[AUDIO]
    assert audio[-1] < audio[0], "the largest radius breaks some samples"
    for m, name in enumerate(trained_jt.modalities):
        expected = (predict(trained_jt, missing_modality(inputs, m)) == labels) & clean
        assert torch.equal(results.correct[Threat("missing", (name,))], expected)


def plain_radii(logits: torch.Tensor, labels: torch.Tensor, table: torch.Tensor) -> tuple[list[float], list[list[float]]]:
    """Proposition 3.4 with Python floats: per sample, min_j margin_j / sqrt(sum_m L[m, y, j]^2) and,
    per modality m, min_j margin_j / L[m, y, j]; 0 for a misclassified sample."""
    rows, table = logits.tolist(), table.tolist()
    multimodal, unimodal = [], [[] for _ in table]
    for row, y in zip(rows, labels.tolist()):
        others = [j for j in range(len(row)) if j != y]
        correct = all(row[y] > row[j] for j in others)
        multimodal.append(min((row[y] - row[j]) / math.sqrt(sum(t[y][j] ** 2 for t in table)) for j in others) if correct else 0.0)
        for m, t in enumerate(table):
            unimodal[m].append(min((row[y] - row[j]) / t[y][j] for j in others) if correct else 0.0)
    return multimodal, unimodal


def test_evaluation_radii_audit_and_certified_accuracy_equal_a_plain_recomputation(trained_jt, data):
    inputs, labels = validation_batch(data)
    settings = RobustnessSettings(curve_radii=(0.5, 1.0), audit_samples=16)
    evaluator = RobustnessEvaluator(trained_jt, settings)
    evaluator.update(inputs, labels)
    results = evaluator.finalize()
    metrics = results.metrics()
    assert [threat.key for threat in metrics.accuracy] == [
        "clean", "fgm", "pgd", "fgm_visual", "pgd_visual", "fgm_audio", "pgd_audio", "missing_visual", "missing_audio"
    ]
    clean = metrics.accuracy[Threat("clean")]
    pgd = metrics.accuracy[Threat("pgd", BOTH.modalities, 0.5)]
    assert pgd <= metrics.accuracy[Threat("fgm", BOTH.modalities, 0.5)]
    assert metrics.curves.radii == [0.0, 0.5, 1.0] and metrics.curves.accuracy[AUDIO][0] == clean
    assert metrics.curves.multimodal[1] == pgd, "the table's budget is reused"

    logits = predict_logits(trained_jt, inputs)
    multimodal, unimodal = plain_radii(logits, labels, results.certified.pair_lipschitz)
    torch.testing.assert_close(results.certified.multimodal, torch.tensor(multimodal), rtol=1e-5, atol=1e-6)
    for m, scope in enumerate((VISUAL, AUDIO)):
        torch.testing.assert_close(results.certified.radii[scope], torch.tensor(unimodal[m]), rtol=1e-5, atol=1e-6)
    grid = settings.radius_grid
    expected = [sum(r >= threshold for r in multimodal) / len(multimodal) for threshold in grid]
    assert metrics.certified.multimodal.certified_accuracy == pytest.approx(expected)
    assert metrics.certified.multimodal.mean == pytest.approx(sum(multimodal) / len(multimodal), rel=1e-5)
    assert metrics.audit.attacked == 16
    assert metrics.audit.eligible == sum(r > 0 for r in multimodal[:16]), "the audit attacks the first 16 certified samples"


def test_crmt_radii_use_the_common_protocol_and_its_own_tau_beside_it(trained_crmt, data):
    """Every model's ``certified`` radii come from the Lipschitz table estimated over the evaluated
    samples (comparable across strategies); CRMT's training-set tau~ gives ``certified_model`` beside it."""
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
    assert torch.allclose(results.certified.multimodal, expected, atol=1e-5)
    assert torch.allclose(results.certified_model.multimodal, own, atol=1e-5)
    assert not torch.allclose(expected, own), "the two populations give different constants"
    metrics = results.metrics()
    assert metrics.certified.multimodal.mean == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics.certified_model.multimodal.mean == pytest.approx(own.mean().item(), rel=1e-5)
    assert "training set" in metrics.certified_model.lipschitz

    per_sample = results.per_sample()
    assert per_sample["index"] == index.tolist() and per_sample["label"] == labels.tolist()
    assert per_sample["correct"]["clean"] == (logits.argmax(dim=1) == labels).int().tolist()
    assert per_sample["radius"] == pytest.approx(expected.tolist(), abs=1e-5)
    for threat, value in metrics.accuracy.items():
        assert sum(per_sample["correct"][threat.key]) / len(labels) == pytest.approx(value)


# --- typed results ------------------------------------------------------------------------------------------------------

MODALITIES3 = ["visual", "audio", "text"]


def test_threat_keys_and_titles_name_the_table_columns_of_any_modalities():
    threats = RobustnessSettings(multimodal_eps=0.25, unimodal_eps=2.0).threats(MODALITIES3)
    assert [t.key for t in threats] == [
        "clean", "fgm", "pgd", "fgm_visual", "pgd_visual", "fgm_audio", "pgd_audio", "fgm_text", "pgd_text",
        "missing_visual", "missing_audio", "missing_text",
    ]
    assert [t.title for t in threats[:5]] == ["Clean", "FGM", "PGD-l2", "FGM visual", "PGD-l2 visual"]
    assert threats[-1].title == "missing text"
    assert threats[2] == Threat("pgd", ("visual", "audio", "text"), 0.25) and threats[4].budget == 2.0
    assert all(Threat.from_json(json.loads(json.dumps(t.to_json()))) == t for t in threats)
    with pytest.raises(ValueError, match="expected 'pgd_audio'"):
        Threat.from_json({"key": "pgd_visual", "kind": "pgd", "attacked": ["audio"], "budget": 1.0})
    for kind, attacked, budget in (("clean", ("audio",), None), ("pgd", ("audio",), None), ("missing", (), None),
                                   ("fgm", ("audio",), -1.0), ("blur", ("audio",), 1.0)):
        with pytest.raises(ValueError):
            Threat(kind, attacked, budget)
    assert [s.key for s in Scope.every(MODALITIES3)] == ["multimodal", "visual", "audio", "text"]
    assert [s.suffix for s in Scope.every(MODALITIES3)] == ["", "_visual", "_audio", "_text"]


def results_with_table(table: torch.Tensor, modalities: list[str]) -> RobustnessResults:
    """Results of 4 samples certified with a hand-built pair Lipschitz ``table`` (M, K, K)."""
    settings = RobustnessSettings(curve_radii=(1.0,))
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 4.0], [2.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 1])
    correct = {threat: logits.argmax(dim=1) == labels for threat in settings.threats(modalities)}
    curves = {scope: (logits.argmax(dim=1) == labels)[:, None] for scope in Scope.every(modalities)}
    certified = CertifiedRadii.of("hand-built", table, logits, labels, modalities)
    return RobustnessResults(modalities, settings, labels, logits, correct, curves, certified=certified)


def test_eta_ratio_of_any_ordered_pair_equals_the_hand_built_table():
    # L[m, y, j] = (m + 1) * (y + 2 j + 1): every off-diagonal ratio is known in closed form
    table = torch.tensor([[[(m + 1.0) * (y + 2 * j + 1) for j in range(3)] for y in range(3)] for m in range(3)])
    results = results_with_table(table, MODALITIES3)
    for top in range(3):
        for bottom in range(3):
            if top == bottom:
                continue
            for numerator, denominator in ((top, bottom), (MODALITIES3[top], MODALITIES3[bottom])):
                ratio = results.eta_ratio(numerator, denominator)
                for y in range(3):
                    for j in range(3):
                        if y == j:
                            assert math.isnan(ratio[y, j])
                        else:
                            assert ratio[y, j].item() == pytest.approx((top + 1) / (bottom + 1), rel=1e-6)
    with pytest.raises(ValueError, match="two different modalities"):
        results.eta_ratio("audio", 1)
    with pytest.raises(ValueError, match="unknown modality"):
        results.eta_ratio("depth", "audio")

    pair = torch.tensor([[[1.0, 2.0, 4.0], [8.0, 1.0, 0.5], [3.0, 6.0, 1.0]], [[1.0, 4.0, 1.0], [2.0, 1.0, 2.0], [6.0, 1.5, 1.0]]])
    metrics = results_with_table(pair, ["visual", "audio"]).metrics()
    ratios = [2 / 4, 4 / 1, 8 / 2, 0.5 / 2, 3 / 6, 6 / 1.5]  # the default pair: visual over audio, off the diagonal
    assert (metrics.eta_ratio.numerator, metrics.eta_ratio.denominator) == ("visual", "audio")
    assert metrics.eta_ratio.matrix == [[None, 0.5, 4.0], [4.0, None, 0.25], [0.5, 4.0, None]]
    assert metrics.eta_ratio.mean_log_ratio == pytest.approx(sum(math.log(r) for r in ratios) / 6, rel=1e-6)


def test_metrics_json_reads_back_into_the_same_typed_metrics(trained_crmt, data, tmp_path):
    inputs, labels = validation_batch(data, size=12)
    settings = RobustnessSettings(curve_radii=(0.5, 1.0), audit_samples=4, sound_certificate=True, audit_sound=True)
    evaluator = RobustnessEvaluator(trained_crmt, settings)
    evaluator.update(inputs, labels)
    results = evaluator.finalize()
    metrics = results.metrics()
    assert metrics.certified_model is not None and metrics.certified_sound is not None and metrics.audit.sound is not None
    files = write_report(results, tmp_path, "crmt", {"seed": 0})
    written = json.loads(files.metrics.read_text(encoding="utf-8"))
    assert RobustnessMetrics.from_json(written) == metrics
    # the sound bound, enabled, is a line below the certificate table, not a headline column
    report = files.markdown.read_text(encoding="utf-8")
    assert "sound radius" not in next(line for line in report.splitlines() if line.startswith("| method | mean radius"))
    sound_mean = results.certified_sound.multimodal.mean().item()
    assert f"mean multi-modal radius {sound_mean:.2e}" in report
    assert written["threats"][2] == {"key": "pgd", "kind": "pgd", "attacked": ["visual", "audio"], "budget": 0.5}
    assert written["audit"]["sound_attacked"] == 4 and written["eta_ratio"]["pair"] == "visual/audio"

    uncertified = RobustnessMetrics(
        samples=2, modalities=["visual", "audio"], settings=settings,
        accuracy={threat: 0.5 for threat in settings.threats(["visual", "audio"])},
        curves=AccuracyCurves([0.0, 0.5, 1.0], {scope: [0.5, 0.5, 0.0] for scope in Scope.every(["visual", "audio"])}),
        sound_note="the model is not certifiable",
    )
    document = json.loads(json.dumps(uncertified.to_json()))
    assert document["certified_sound"] == {"note": "the model is not certifiable"} and "certified" not in document
    assert RobustnessMetrics.from_json(document) == uncertified
