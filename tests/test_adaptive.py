"""The adaptive evaluation: APGD, Square and the suite against exact references, masked gradients, and the
sanity checks raised where they must be and quiet where they must not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crmt.models.heads import FusionOutput
from crmt.robustness.apgd import APGD, checkpoint_intervals
from crmt.robustness.attack import predict
from crmt.robustness.attack_losses import AttackLoss, margin
from crmt.robustness.ball import Ball
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.pgd import L2PGD
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.square import SquareL2
from crmt.robustness.suite import SUITES, AdaptiveSettings, run_suite, suite_attacks
from crmt.robustness.threats import Scope, Threat
from helpers import validation_batch

SHAPES = [(3, 2, 8, 8), (1, 12, 16)]
CLASSES = 6


class LinearModel(nn.Module):
    """h(x) = scale * (W^(v) x^(v) + W^(a) x^(a) + b) with fixed random W, b: the smallest adversarial
    perturbation of each sample is known in closed form."""

    modalities = ["visual", "audio"]

    def __init__(self, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_classes = CLASSES
        self.weights = [torch.randn(CLASSES, math.prod(shape), generator=generator) / 10 for shape in SHAPES]
        self.bias = torch.randn(CLASSES, generator=generator)
        self.scale = scale

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode_modality(self, m: int, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weights[m].T

    def fuse(self, features) -> FusionOutput:
        return FusionOutput(self.scale * (sum(features) + self.bias), torch.stack(list(features)))

    def forward(self, inputs) -> FusionOutput:
        return self.fuse([self.encode_modality(m, x) for m, x in enumerate(inputs)])


class QuantizedInputs(LinearModel):
    """The linear model on inputs rounded to a grid of 1e-3: the same predictions up to the rounding, but
    the input gradient is exactly zero everywhere (shattered gradients), which every gradient attack obeys."""

    def encode_modality(self, m: int, x: torch.Tensor) -> torch.Tensor:
        return super().encode_modality(m, torch.round(x * 1000) / 1000)


class SoftmaxOutputs(LinearModel):
    """The linear model returning saturated probabilities softmax(1e4 h) as its logits: one-hot in float32, so
    its gradients vanish and its scores are flat: no attack gets a signal."""

    def fuse(self, features) -> FusionOutput:
        fused = super().fuse(features)
        return FusionOutput(torch.softmax(1e4 * fused.logits, dim=1), fused.scores)


def linear_samples(model: LinearModel, count: int = 120, seed: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random inputs, labelled with the model's own predictions (every sample is correctly classified)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(count, *shape, generator=generator) for shape in SHAPES]
    return inputs, predict(model, inputs)


def smallest_perturbation(model: LinearModel, inputs, labels, attacked: list[int]) -> torch.Tensor:
    """(B,) min over j != y of (h_y - h_j) / (scale ||(W_y - W_j)_S||), S the attacked modalities' columns:
    the l2 distance to the nearest decision boundary (docs/robustness.md, "Adaptive evaluation")."""
    logits = model(inputs).logits / model.scale
    distances = torch.full((len(labels),), float("inf"))
    for j in range(CLASSES):
        difference = torch.sqrt(sum((model.weights[m][labels] - model.weights[m][j]).pow(2).sum(dim=1) for m in attacked))
        gap = logits.gather(1, labels[:, None]).squeeze(1) - logits[:, j]
        distances = torch.where(labels == j, distances, torch.minimum(distances, gap / difference))
    return distances


SCOPES = {"joint": [0, 1], "visual": [0], "audio": [1]}


@pytest.mark.parametrize("scope", list(SCOPES))
def test_the_quick_suite_breaks_a_linear_model_just_beyond_its_exact_distance_and_never_within(scope):
    """At 1.01 x the closed-form smallest perturbation at least 99% of the samples fall; at 0.99 x none
    (the ball's projection never overshoots)."""
    model = LinearModel()
    inputs, labels = linear_samples(model)
    attacked = SCOPES[scope]
    distance = smallest_perturbation(model, inputs, labels, attacked)
    attacks = suite_attacks(SUITES["quick"], CLASSES)
    for factor, least, most in ((1.01, 0.99, 1.0), (0.99, 0.0, 0.0)):
        outcome = run_suite(model, inputs, labels, Ball.around(inputs, distance * factor, attacked), attacks,
                            generator=torch.Generator().manual_seed(0))
        rate = outcome.broken.float().mean().item()
        assert least <= rate <= most, (factor, rate)
        moved = [(a - x).flatten(1).pow(2).sum(dim=1) for a, x in zip(outcome.adversarial, inputs)]
        assert (torch.sqrt(sum(moved)) <= distance * factor * (1 + 1e-5)).all()
        assert torch.equal(outcome.broken, predict(model, outcome.adversarial) != labels)


def test_the_papers_pgd_is_weaker_than_apgd_t_on_the_linear_model():
    """The paper's 4-step cross-entropy PGD leaves most samples standing at 1.01 x their distance; the
    targeted DLR finds the nearest boundary."""
    model = LinearModel()
    inputs, labels = linear_samples(model)
    ball = Ball.around(inputs, smallest_perturbation(model, inputs, labels, [0, 1]) * 1.01)
    pgd = L2PGD()(model, inputs, labels, ball).broken.float().mean().item()
    apgd = APGD("dlr-targeted", steps=25, targets=3)(model, inputs, labels, ball, generator=torch.Generator().manual_seed(0))
    assert pgd < 0.5 and apgd.broken.float().mean().item() >= 0.99


def test_logits_scaled_by_1e4_mask_float32_cross_entropy_but_not_crmts_attacks():
    """The issue's masked model. torch's float32 cross-entropy gradient is exactly zero at its confident samples,
    so a plain CE attack would stall; crmt's PGD takes the CE gradient in the log domain
    (``ascent_direction``) and the DLR loss is scale-invariant, so both break as many samples as on the
    unscaled model."""
    honest, scaled = LinearModel(), LinearModel(scale=1e4)
    inputs, labels = linear_samples(honest)
    x = [t.clone().requires_grad_(True) for t in inputs]
    plain = torch.autograd.grad(F.cross_entropy(scaled(x).logits, labels, reduction="sum"), x)
    vanished = torch.stack([g.flatten(1).abs().sum(dim=1) == 0 for g in plain]).all(dim=0)
    assert vanished.float().mean() > 0.9, "the scaled logits mask the plain float32 cross-entropy gradient"
    ball = Ball.around(inputs, smallest_perturbation(honest, inputs, labels, [0, 1]) * 1.5)
    for attack in (L2PGD(), APGD("dlr-targeted", steps=25, targets=3)):
        broken = [attack(model, inputs, labels, ball, generator=torch.Generator().manual_seed(0)).broken for model in (honest, scaled)]
        assert broken[1].float().mean() >= broken[0].float().mean() - 0.02, (type(attack).__name__, broken)
        assert broken[1].float().mean() > 0.5


def test_dlr_losses_equal_their_formulas_and_are_invariant_to_shifting_and_scaling_the_logits():
    logits = torch.tensor([[3.0, 1.0, 2.5, -1.0, 0.5], [0.2, 0.1, -0.3, 0.4, 0.0]])
    labels = torch.tensor([0, 2])
    targets = torch.tensor([2, 3])
    dlr = AttackLoss("dlr", 5).values(logits, labels)
    targeted = AttackLoss("dlr-targeted", 5).values(logits, labels, targets)
    # sorted: [3, 2.5, 1, 0.5, -1] and [0.4, 0.2, 0.1, 0, -0.3]
    expected = torch.tensor([-(3.0 - 2.5) / (3.0 - 1.0), -(-0.3 - 0.4) / (0.4 - 0.1)], dtype=torch.float64)
    torch.testing.assert_close(dlr, expected)
    expected = torch.tensor([-(3.0 - 2.5) / (3.0 - (1.0 + 0.5) / 2), -(-0.3 - 0.4) / (0.4 - (0.1 + 0.0) / 2)], dtype=torch.float64)
    torch.testing.assert_close(targeted, expected)
    for name in ("dlr", "dlr-targeted"):
        loss = AttackLoss(name, 5)
        torch.testing.assert_close(loss.values(7.0 * logits - 3.0, labels, targets), loss.values(logits, labels, targets))
    torch.testing.assert_close(margin(logits, labels), torch.tensor([0.5, -0.7]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        AttackLoss("dlr-targeted", 3)


def test_apgd_checkpoints_follow_the_papers_recursion():
    """w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); for N = 100 the
    reference code's 22, 19, 16, 13, 10, 7, 6, 6."""
    assert checkpoint_intervals(100) == [22, 19, 16, 13, 10, 7, 6, 6]
    for steps in (25, 50, 200):
        fractions = [0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99]  # the recursion, by hand
        points = sorted({math.ceil(round(f * steps, 6)) for f in fractions})
        assert checkpoint_intervals(steps) == [b - a for a, b in zip([0, *points], points)], steps


class NoGradient(torch.autograd.Function):
    """Identity forward; a backward pass through it fails the test."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("the Square attack must not differentiate the model")


class GradientFree(LinearModel):
    def encode_modality(self, m: int, x: torch.Tensor) -> torch.Tensor:
        return super().encode_modality(m, NoGradient.apply(x))


def test_square_uses_no_gradient_and_breaks_what_shattered_gradients_hide_from_gradient_attacks():
    honest = GradientFree()
    inputs, labels = linear_samples(honest, count=60)
    ball = Ball.around(inputs, smallest_perturbation(honest, inputs, labels, [0, 1]) * 4)
    square = SquareL2(queries=300)(honest, inputs, labels, ball, generator=torch.Generator().manual_seed(0))
    assert square.broken.float().mean() >= 0.8
    masked = QuantizedInputs()
    assert not L2PGD()(masked, inputs, labels, ball).broken.any(), "zero gradients: PGD never leaves the clean point"
    for attack in (APGD("ce", steps=25), APGD("dlr-targeted", steps=25, targets=3)):  # only their random starts break any
        assert attack(masked, inputs, labels, ball, generator=torch.Generator().manual_seed(0)).broken.float().mean() < 0.2
    assert SquareL2(queries=300)(masked, inputs, labels, ball, generator=torch.Generator().manual_seed(0)).broken.float().mean() >= 0.8


def evaluate(model: nn.Module, inputs, labels, eps: float, batch: int = 40) -> RobustnessEvaluator:
    """The report's evaluation of ``model`` (joint budget ``eps``, uni-modal 2 x eps, quick suite) in batches."""
    settings = RobustnessSettings(multimodal_eps=eps, unimodal_eps=2 * eps, curve_radii=(), certify=False,
                                  adaptive=AdaptiveSettings(suite="quick", chunk=64, sanity_samples=24))
    evaluator = RobustnessEvaluator(model, settings, dataset_size=len(labels))
    for start in range(0, len(labels), batch):
        rows = slice(start, start + batch)
        evaluator.update([x[rows] for x in inputs], labels[rows], torch.arange(len(labels))[rows])
    return evaluator


def raised(evaluator: RobustnessEvaluator) -> set[str]:
    return {check.key for check in evaluator.finalize().metrics().adaptive.raised}


def test_no_check_is_raised_on_an_honest_model():
    model = LinearModel()
    inputs, labels = linear_samples(model)
    eps = smallest_perturbation(model, inputs, labels, [0, 1]).median().item()
    evaluator = evaluate(model, inputs, labels, eps)
    results = evaluator.finalize()
    metrics = results.metrics()
    assert not metrics.adaptive.raised, [check.line() for check in metrics.adaptive.checks]
    checked = {check.key: check.checked for check in metrics.adaptive.checks}
    assert checked["large_budget"] > 0 and checked["not_converged"] > 0 and checked["randomness"] == 24
    joint = Scope(("visual", "audio"))
    adaptive, pgd = (metrics.accuracy[Threat(kind, joint.modalities, eps)] for kind in ("adaptive", "pgd"))
    exact = (smallest_perturbation(model, inputs, labels, [0, 1]) > eps).float().mean().item()
    assert adaptive == pytest.approx(exact, abs=1 / 120) and pgd >= adaptive


def test_shattered_gradients_raise_the_zero_gradient_and_black_box_checks():
    """Input quantization: every gradient attack, the paper's PGD included, is stuck at the clean point; the
    gradient-free Square attack breaks samples, and the report says why its gradient attacks cannot be trusted."""
    model = QuantizedInputs()
    inputs, labels = linear_samples(model)
    eps = 4 * smallest_perturbation(LinearModel(), inputs, labels, [0, 1]).median().item()
    results = evaluate(model, inputs, labels, eps).finalize()
    metrics = results.metrics()
    keys = {check.key for check in metrics.adaptive.raised}
    assert {"zero_gradients", "black_box"} <= keys
    joint = Scope(("visual", "audio"))
    assert metrics.accuracy[Threat("pgd", joint.modalities, eps)] == 1.0, "the paper's PGD fails on masked gradients"
    assert metrics.accuracy[Threat("adaptive", joint.modalities, eps)] < 0.8
    assert metrics.adaptive.broken_by[joint]["square"] > 25


def test_flat_scores_raise_the_large_budget_check():
    """Saturated probabilities as logits: nothing moves the scores, so even at a budget where another class's
    sample lies in the ball, nothing is broken, and the check says so."""
    model = SoftmaxOutputs()
    inputs, labels = linear_samples(model)
    assert "large_budget" in raised(evaluate(model, inputs, labels, eps=0.5))


def test_an_unconverged_suite_raises_the_convergence_check(monkeypatch, trained_jt, data):
    """With two APGD iterations and two Square queries the suite is far from converged on a trained model:
    twice its size breaks more of the samples it left standing, and the check says so."""
    from crmt.robustness import suite

    monkeypatch.setitem(suite.SUITES, "quick", suite.SuiteSize(apgd_steps=2, restarts=1, targets=1, square_queries=2))
    inputs, labels = validation_batch(data)
    assert "not_converged" in raised(evaluate(trained_jt, inputs, labels, eps=5.0))


def test_adaptive_records_metrics_json_report_and_per_sample_agree(trained_crmt, data, tmp_path):
    """The adaptive threats are, per sample, the paper's FGM and PGD outcomes and the suite's together;
    metrics.json reads back into the same metrics; the report and per_sample.json carry them."""
    import json

    from crmt.robustness.report import write_report
    from crmt.robustness.results import RobustnessMetrics

    inputs, labels = validation_batch(data, size=20)
    settings = RobustnessSettings(multimodal_eps=3.0, unimodal_eps=6.0, curve_radii=(3.0,), audit_samples=20,
                                  adaptive=AdaptiveSettings(suite="quick", chunk=8, sanity_samples=10))
    evaluator = RobustnessEvaluator(trained_crmt, settings, dataset_size=20)
    for rows in (slice(0, 7), slice(7, 20)):
        evaluator.update([x[rows] for x in inputs], labels[rows], torch.arange(20)[rows])
    results = evaluator.finalize()
    metrics = results.metrics()
    assert [threat.key for threat in metrics.threats] == [
        "clean", "fgm", "pgd", "adaptive", "fgm_visual", "pgd_visual", "adaptive_visual", "fgm_audio", "pgd_audio",
        "adaptive_audio", "missing_visual", "missing_audio",
    ]
    for scope in Scope.every(["visual", "audio"]):
        budget = settings.budget(scope)
        fgm, pgd, adaptive = (results.correct[Threat(kind, scope.modalities, budget)] for kind in ("fgm", "pgd", "adaptive"))
        codes = results.broken_by[scope]
        assert torch.equal(adaptive, fgm & pgd & (codes == -1))
        assert torch.equal(codes == -2, ~results.correct[Threat("clean")]), "exactly the misclassified samples are not attacked"
        counts = metrics.adaptive.broken_by[scope]
        assert sum(counts.values()) == int((codes != -2).sum())
    assert metrics.audit.adaptive_violations >= metrics.audit.violations
    files = write_report(results, tmp_path, "crmt", {"seed": 0})
    written = json.loads(files.metrics.read_text(encoding="utf-8"))
    assert RobustnessMetrics.from_json(written) == metrics
    assert written["adaptive"]["attacks"] == ["apgd-ce", "apgd-t", "square"] and written["settings"]["adaptive"]["suite"] == "quick"
    report = files.markdown.read_text(encoding="utf-8")
    assert "## Adaptive evaluation" in report and "| Adaptive |" in report.replace("Adaptive visual", "")
    assert report.count("two clean forward passes differ") == 1
    per_sample = json.loads((tmp_path / "per_sample.json").read_text(encoding="utf-8"))
    assert per_sample["adaptive_broken_by"]["multimodal"] == results.broken_by[Scope(("visual", "audio"))].tolist()


def test_a_raised_check_heads_the_report_and_reads_back():
    from crmt.robustness.report import render_markdown
    from crmt.robustness.results import AccuracyCurves, AdaptiveSummary, RobustnessMetrics
    from crmt.robustness.sanity import SanityCheck

    settings = RobustnessSettings(adaptive=AdaptiveSettings(suite="quick"))
    modalities = ["visual", "audio"]
    checks = [SanityCheck("black_box", 3, 100), SanityCheck("not_converged", 2, 100, 0.02), SanityCheck("randomness", 0, 32)]
    scopes = Scope.every(modalities)
    summary = AdaptiveSummary("quick", SUITES["quick"], ["apgd-ce", "apgd-t", "square"],
                              {scope: {"apgd-ce": 5, "apgd-t": 1, "square": 3, "standing": 80} for scope in scopes}, checks)
    metrics = RobustnessMetrics(
        samples=100, modalities=modalities, settings=settings,
        accuracy={threat: 0.5 for threat in settings.threats(modalities)},
        curves=AccuracyCurves([0.0], {scope: [0.5] for scope in scopes}), adaptive=summary,
    )
    assert [check.key for check in summary.raised] == ["black_box"], "2 of 100 is within the 2% tolerance"
    report = render_markdown("masked", metrics)
    assert report.splitlines()[2].startswith("**FLAGGED")
    assert "**FLAG**: the gradient-free attack broke samples that every gradient attack left standing: 3 of 100" in report
    assert RobustnessMetrics.from_json(metrics.to_json()) == metrics


def test_the_adaptive_benchmark_counts_what_the_exact_distances_predict():
    """benchmarks/adaptive.py's timing of one model: the suite's per-attack counts add up to the correctly
    classified clips of each scope, and the clips left standing are those beyond the suite's reach."""
    from benchmarks.adaptive import run_model

    model = LinearModel()
    inputs, labels = linear_samples(model, count=48)
    eps = smallest_perturbation(model, inputs, labels, [0, 1]).median().item()
    settings = RobustnessSettings(multimodal_eps=eps, unimodal_eps=2 * eps, curve_radii=(), certify=False,
                                  adaptive=AdaptiveSettings(suite="quick", chunk=48, sanity_samples=8))
    result = run_model(model, (inputs, labels, torch.arange(48)), [None, None], settings, 1, 16, 48)
    assert result["suite_ratio"] == pytest.approx(result["suite"] / result["pgd_pass"])
    assert result["checks_ratio"] == pytest.approx(result["checks"] / result["pgd_pass"])
    assert len(result["sanity_checks"]) == 6
    for key, attacked, budget in (("multimodal", [0, 1], eps), ("visual", [0], 2 * eps), ("audio", [1], 2 * eps)):
        counts = result["broken_by"][key]
        beyond = int((smallest_perturbation(model, inputs, labels, attacked) > budget).sum())
        assert sum(counts.values()) == 48
        assert abs(counts["standing"] - beyond) <= 1, (key, counts, beyond)
