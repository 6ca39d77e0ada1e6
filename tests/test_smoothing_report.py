"""Randomized smoothing in the robustness report: settings, the exact certified-accuracy curves, the
evaluation against direct calls of CERTIFY, metrics.json / per_sample.json and report.md."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from lightning.pytorch import LightningDataModule
from scipy.stats import norm

from crmt.callbacks.robustness import RobustnessReport, scalar_metrics
from crmt.cli import CRMTCLI, MultiModalModule, default_config_files
from crmt.experiments import config_files
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.records import RobustnessResults
from crmt.robustness.report import SMOOTHED_COLUMN, render_markdown, write_report
from crmt.robustness.results import RadiusSummary, RobustnessMetrics, SmoothedCertificate, SurvivalCurve
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import ABSTAIN, SmoothedCertificates, SmoothingSettings, certify, noise_generator
from crmt.robustness.threats import Scope
from helpers import validation_batch

MODALITIES = ["visual", "audio"]
SCOPES = Scope.every(MODALITIES)
NOISED = {SCOPES[0]: [0, 1], SCOPES[1]: [0], SCOPES[2]: [1]}
"""The modalities each scope noises, and (by position) its scope number in :func:`noise_generator`."""
SMOOTHING = SmoothingSettings(sigma=4.0, n0=8, n=64, alpha=0.01, batch=32, samples=4, seed=3)
# n = 64 draws at alpha = 0.01 certify at most 4 * Phi^-1(0.01^(1/64)) = 5.92; at sigma = 4 trained_jt's radii
# spread below and above the budgets, and its joint smoothed classifier is wrong on some samples
SETTINGS = RobustnessSettings(multimodal_eps=3.0, unimodal_eps=3.5, curve_radii=(), audit_samples=0, smoothing=SMOOTHING)
INDEX = torch.arange(100, 112)


# --- Settings ----------------------------------------------------------------------------------


def test_defaults_have_neither_the_sound_bound_nor_smoothing_and_settings_read_back():
    assert RobustnessSettings().sound_certificate is False and RobustnessSettings().smoothing is None
    assert RobustnessSettings.from_json(json.loads(json.dumps(SETTINGS.to_json()))) == SETTINGS
    older = RobustnessSettings(curve_radii=(1.0,)).to_json()
    del older["smoothing"]  # a metrics.json written before smoothing existed
    assert RobustnessSettings.from_json(older) == RobustnessSettings(curve_radii=(1.0,))


def test_samples_zero_turns_smoothing_off_also_on_the_command_line(tmp_path, monkeypatch):
    """``smoothing.samples=0`` is the command line's off switch (jsonargparse refuses ``...smoothing=null``
    for an argument nested in the callback list): the report's settings then hold no smoothing."""
    assert RobustnessSettings(smoothing=replace(SMOOTHING, samples=0)).smoothing is None
    assert RobustnessSettings(smoothing=SMOOTHING).smoothing == SMOOTHING
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [argument for path in config_files("crmt_jt") for argument in ("--config", str(path))]
    args.append("--report.settings.smoothing.samples=0")
    cli = CRMTCLI(MultiModalModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  parser_kwargs={"default_config_files": default_config_files(args)}, args=args)
    report = next(callback for callback in cli.trainer.callbacks if isinstance(callback, RobustnessReport))
    assert report.settings.smoothing is None and report.settings.multimodal_eps == 4.0  # the rest as configured


# --- The exact certified-accuracy curves ---------------------------------------------------------


def test_estimated_curve_is_the_survival_function_of_the_radii():
    radius = torch.tensor([0.5, 0.0, 1.5, 0.5, 2.0, 0.25])  # binary fractions: exact in float32
    correct = torch.tensor([True, False, True, True, False, True])
    # correct radii 0.25, 0.5, 0.5, 1.5 of 6 samples: acc(r) = #{correct, radius >= r} / 6
    curve = SurvivalCurve.of(radius, correct)
    assert curve == SurvivalCurve([0.0, 0.25, 0.5, 1.5], [4 / 6, 4 / 6, 3 / 6, 1 / 6])
    for r, expected in ((0.0, 4 / 6), (0.25, 4 / 6), (0.3, 3 / 6), (0.5, 3 / 6), (1.0, 1 / 6), (1.5, 1 / 6), (1.51, 0.0)):
        assert curve.at(r) == pytest.approx(expected), r
    summary = RadiusSummary.of(radius, correct, [0.0, 0.4, 2.0])
    assert summary.curve == curve and summary.certified_accuracy == pytest.approx([4 / 6, 3 / 6, 0.0])
    assert SurvivalCurve.of(radius, torch.zeros(6, dtype=torch.bool)) == SurvivalCurve([0.0], [0.0])


def test_smoothed_curve_abstention_and_budget_accuracy_equal_a_hand_computation():
    certificates = SmoothedCertificates(
        prediction=torch.tensor([2, 1, ABSTAIN, 0, 1, 2, ABSTAIN, 1]),
        radius=torch.tensor([0.25, 0.75, 0.0, 0.5, 0.75, 1.25, 0.0, 0.125]),
        label=torch.tensor([2, 1, 1, 1, 1, 2, 0, 1]),
        index=torch.arange(8),
    )
    # correct: radii 0.25, 0.75, 0.75, 1.25, 0.125 of 8 samples; 2 abstentions
    certificate = SmoothedCertificate.of(certificates, SMOOTHING, budget=0.5)
    assert certificate.curve == SurvivalCurve([0.0, 0.125, 0.25, 0.75, 1.25], [5 / 8, 5 / 8, 4 / 8, 3 / 8, 1 / 8])
    assert certificate.abstention_rate == pytest.approx(2 / 8) and certificate.certified == 8
    assert certificate.accuracy_at_budget == pytest.approx(3 / 8)  # radius >= 0.5: 0.75, 0.75, 1.25
    assert (certificate.sigma, certificate.n0, certificate.n, certificate.alpha) == (4.0, 8, 64, 0.01)


# --- An evaluation of a trained JT model ---------------------------------------------------------


def evaluate(model, data, index: torch.Tensor | None, all_gather=None, settings=SETTINGS) -> RobustnessResults:
    """Evaluate the first 12 validation samples in batches of 3 (smoothing certifies 4 of them)."""
    inputs, labels = validation_batch(data, size=12)
    evaluator = RobustnessEvaluator(model, settings)
    for rows in torch.arange(12).split(3):
        evaluator.update([x[rows] for x in inputs], labels[rows], index[rows] if index is not None else None)
    return evaluator.finalize(all_gather)


@pytest.fixture(scope="module")
def smoothed(trained_jt, data) -> RobustnessResults:
    return evaluate(trained_jt, data, INDEX)


def direct_certificates(model, data, index: torch.Tensor) -> dict[Scope, list[tuple[int, float]]]:
    """CERTIFY called on each of the first 4 samples alone, noise from (seed, dataset index, scope number)."""
    inputs, _ = validation_batch(data, size=4)
    return {
        scope: [
            certify(model, [x[i : i + 1] for x in inputs], noised, SMOOTHING,
                    noise_generator(SMOOTHING.seed, int(index[i]), number))
            for i in range(4)
        ]
        for number, (scope, noised) in enumerate(NOISED.items())
    }


def hand_accuracy(certificates: list[tuple[int, float]], labels: torch.Tensor, radius: float) -> float:
    return sum(p == int(y) and r >= radius for (p, r), y in zip(certificates, labels, strict=True)) / len(certificates)


def test_evaluation_certifies_like_certify_called_on_each_sample(smoothed, trained_jt, data):
    _, labels = validation_batch(data, size=4)
    direct = direct_certificates(trained_jt, data, INDEX)
    metrics = smoothed.metrics()
    assert list(smoothed.smoothed) == SCOPES and list(metrics.smoothed) == SCOPES
    for scope, expected in direct.items():
        certificates = smoothed.smoothed[scope]
        assert torch.equal(certificates.index, INDEX[:4]) and torch.equal(certificates.label, labels)
        assert certificates.prediction.tolist() == [p for p, _ in expected]
        assert certificates.radius.tolist() == pytest.approx([r for _, r in expected], rel=1e-6)
        summary = metrics.smoothed[scope]
        budget = SETTINGS.budget(scope)
        assert summary.budget == budget and summary.certified == 4
        assert summary.accuracy_at_budget == pytest.approx(hand_accuracy(expected, labels, budget))
        assert summary.abstention_rate == pytest.approx(sum(p == ABSTAIN for p, _ in expected) / 4)
    shares = [hand_accuracy(expected, labels, SETTINGS.budget(scope)) for scope, expected in direct.items()]
    assert any(0 < share < 1 for share in shares), f"radii on both sides of the budget: the test can fail ({shares})"


def test_without_dataset_indices_the_running_row_number_seeds_the_noise(trained_jt, data):
    results = evaluate(trained_jt, data, None)
    direct = direct_certificates(trained_jt, data, torch.arange(4))
    for scope, expected in direct.items():
        assert torch.equal(results.smoothed[scope].index, torch.arange(4))
        assert results.smoothed[scope].radius.tolist() == pytest.approx([r for _, r in expected], rel=1e-6)


def test_smoothing_certificates_of_every_rank_are_gathered(smoothed, trained_jt, data):
    def two_ranks(tensor: torch.Tensor) -> torch.Tensor:  # rank 1 holds the same rows as rank 0
        return torch.stack([tensor, tensor])

    settings = RobustnessSettings(certify=False, curve_radii=(), audit_samples=0, smoothing=SMOOTHING)
    gathered = evaluate(trained_jt, data, INDEX, two_ranks, settings)
    for scope in SCOPES:
        for name in ("prediction", "radius", "label", "index"):
            assert torch.equal(getattr(gathered.smoothed[scope], name), getattr(smoothed.smoothed[scope], name).repeat(2))


# --- metrics.json, per_sample.json, report.md, W&B scalars ---------------------------------------


def table_rows(markdown: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header line starts with ``header_start``, as {column: cell}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


def test_report_files_hold_the_smoothing_certificates(smoothed, trained_jt, data, tmp_path):
    files = write_report(smoothed, tmp_path, "jt")
    metrics = smoothed.metrics()
    written = json.loads(files.metrics.read_text(encoding="utf-8"))
    assert RobustnessMetrics.from_json(written) == metrics
    assert written["smoothed"]["multimodal"]["accuracy_at_budget"] == metrics.smoothed[SCOPES[0]].accuracy_at_budget
    assert written["certified"]["audio"]["curve"] == metrics.certified.radii[SCOPES[2]].curve.to_json()
    per_sample = json.loads((tmp_path / "per_sample.json").read_text(encoding="utf-8"))
    for scope in SCOPES:
        rows = per_sample["smoothed"][scope.key]
        certificates = smoothed.smoothed[scope]
        assert rows["index"] == INDEX[:4].tolist() and rows["prediction"] == certificates.prediction.tolist()
        assert rows["radius"] == certificates.radius.tolist()
    assert files.certified_accuracy is not None and files.certified_accuracy.is_file()

    _, labels = validation_batch(data, size=4)
    direct = direct_certificates(trained_jt, data, INDEX)
    report = files.markdown.read_text(encoding="utf-8")
    assert "4 of 12 test samples certified (a subset of the test split" in report
    rows = {row["scope (noised)"]: row for row in table_rows(report, "| scope (noised) |")}
    assert list(rows) == ["joint (every modality)", "visual only", "audio only"]
    for name, scope in zip(rows, SCOPES, strict=True):
        budget = SETTINGS.budget(scope)
        assert float(rows[name]["budget"]) == budget
        for column, radius in (("certified acc. at the budget", budget), ("certified acc. r = 2", 2.0)):
            assert float(rows[name][column]) == pytest.approx(hand_accuracy(direct[scope], labels, radius), abs=5e-4)
    (accuracy_row,) = table_rows(report, "| method |")[:1]
    joint = hand_accuracy(direct[SCOPES[0]], labels, SETTINGS.multimodal_eps)
    assert float(accuracy_row[SMOOTHED_COLUMN]) == pytest.approx(joint, abs=5e-4)
    assert "layer-product" not in report  # the sound Lipschitz bound is off by default

    scalars = scalar_metrics(metrics, "report")
    for scope in SCOPES:
        assert scalars[f"report/smoothed_acc_at_budget{scope.suffix}"] == metrics.smoothed[scope].accuracy_at_budget
        assert scalars[f"report/smoothed_abstention{scope.suffix}"] == metrics.smoothed[scope].abstention_rate


def test_a_budget_beyond_the_reach_of_smoothing_is_marked_and_the_reach_is_written(smoothed):
    """R_max = sigma * Phi^-1(alpha^(1/n)) (5.92 at sigma 4, n 64, alpha 0.01) in metrics.json, W&B and the
    report; a joint budget of 8 lies beyond it: its accuracy is 0 and both tables say why."""
    metrics = smoothed.metrics()
    reach = SMOOTHING.sigma * norm.ppf(SMOOTHING.alpha ** (1 / SMOOTHING.n))
    far = {scope: replace(c, budget=8.0) if scope.multimodal else c for scope, c in metrics.smoothed.items()}
    metrics = replace(metrics, smoothed=far)
    joint = metrics.smoothed[SCOPES[0]]
    assert joint.max_radius == pytest.approx(reach, rel=1e-9) and joint.budget_out_of_reach
    assert joint.accuracy_at_budget == 0.0 and joint.curve.radii[-1] <= reach
    assert not any(metrics.smoothed[scope].budget_out_of_reach for scope in SCOPES[1:])
    written = metrics.to_json()["smoothed"]
    assert all(written[scope.key]["max_radius"] == pytest.approx(reach, rel=1e-9) for scope in SCOPES)
    assert RobustnessMetrics.from_json(json.loads(json.dumps(metrics.to_json()))) == metrics
    scalars = scalar_metrics(metrics, "report")
    assert all(scalars[f"report/smoothed_max_radius{scope.suffix}"] == pytest.approx(reach) for scope in SCOPES)

    report = render_markdown("jt", metrics)
    assert f"cannot certify beyond R_max = sigma * Phi^-1(alpha^(1/n)) = {reach:.3f}" in report
    (accuracy_row,) = table_rows(report, "| method |")[:1]
    assert accuracy_row[SMOOTHED_COLUMN] == f"0.000 (budget > R_max {reach:.2f})"
    rows = table_rows(report, "| scope (noised) |")
    assert rows[0]["certified acc. at the budget"] == f"0.000 (budget > R_max {reach:.2f})"
    assert all("R_max" not in row["certified acc. at the budget"] for row in rows[1:])
