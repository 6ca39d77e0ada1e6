"""Multi-seed comparison without training: the paired two-level bootstrap against independent
computations (exact bootstrap variance, scipy, simulated coverage), the mean ± std tables, the
paper's orderings on fake run folders (typed metrics read back from their metrics.json), run reuse
(the training subprocess is replaced), and the errors for unpaired test sets, failed runs and
missing configs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from crmt import compare
from crmt.compare_report import PairedOutcomes, SeedRun, load_run, pair_outcomes, preference_claims, write_comparison
from crmt.robustness.results import (
    AccuracyCurves,
    AdaptiveSummary,
    Certificate,
    RadiusSummary,
    RobustnessMetrics,
    SmoothedCertificate,
    SurvivalCurve,
)
from crmt.robustness.sanity import SanityCheck
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import SmoothingSettings
from crmt.robustness.suite import SUITES, AdaptiveSettings
from crmt.robustness.threats import Scope, Threat
from crmt.statistics import (
    absolute_gap,
    mean_accuracy,
    overall_verdict,
    paired_bootstrap,
    seed_mean_std,
    verdict,
)

MODALITIES = ["visual", "audio"]
KEYS = ["clean", "fgm", "pgd", "fgm_visual", "pgd_visual", "fgm_audio", "pgd_audio", "missing_visual", "missing_audio"]


# --- statistics ------------------------------------------------------------------------------------------------------


def test_seed_mean_std_is_numpy_mean_and_sample_std():
    values = [0.81, 0.77, 0.9, 0.62]
    assert seed_mean_std(values) == pytest.approx((np.mean(values), np.std(values, ddof=1)), abs=1e-15)
    assert seed_mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        seed_mean_std([])


def test_verdict_reads_the_interval_on_the_claimed_side():
    assert verdict((0.01, 0.2)) == "holds"
    assert verdict((-0.2, -0.01)) == "reversed"
    assert verdict((-0.01, 0.2)) == verdict((0.0, 0.2)) == "within noise"
    assert verdict((-0.2, -0.01), higher_is_better=False) == "holds"
    assert verdict((0.01, 0.2), higher_is_better=False) == "reversed"
    assert overall_verdict(["holds", "holds"]) == "holds"
    assert overall_verdict(["holds", "within noise"]) == "within noise"
    assert overall_verdict(["holds", "reversed", "within noise"]) == "reversed"


def _bernoulli(rng: np.random.Generator, p: np.ndarray | float, shape: tuple[int, int]) -> np.ndarray:
    return (rng.random(shape) < p).astype(float)


def test_bootstrap_verdicts_on_synthetic_effects():
    rng = np.random.default_rng(0)
    strong, weak = _bernoulli(rng, 0.9, (3, 200)), _bernoulli(rng, 0.5, (3, 200))
    assert verdict(paired_bootstrap(strong, weak).interval) == "holds"
    assert verdict(paired_bootstrap(weak, strong).interval) == "reversed"
    identical = paired_bootstrap(strong, strong)
    assert identical.observed == identical.standard_error == 0.0
    assert verdict(identical.interval) == "within noise"
    twin = _bernoulli(rng, 0.9, (3, 200))  # same distribution as ``strong``, other draws
    result = paired_bootstrap(strong, twin)
    assert result.observed == pytest.approx(strong.mean() - twin.mean())
    assert verdict(result.interval) == "within noise"


def _scipy_bootstrap(values: np.ndarray):
    """scipy's percentile bootstrap of the mean with a fixed generator (``rng`` from scipy 1.15, ``random_state`` before)."""
    options = {"n_resamples": 10_000, "method": "percentile"}
    try:
        return stats.bootstrap((values,), np.mean, rng=np.random.default_rng(5), **options)
    except TypeError:
        return stats.bootstrap((values,), np.mean, random_state=np.random.default_rng(5), **options)


def test_single_seed_standard_error_matches_the_formula_and_scipy():
    """With one seed the paired bootstrap of a mean difference is a bootstrap of the mean of
    d = a - b over clips: SE -> std(d) / sqrt(C) (ddof 0), as scipy's bootstrap also estimates."""
    rng = np.random.default_rng(1)
    clip_p = rng.uniform(0.3, 0.9, size=300)
    a, b = _bernoulli(rng, clip_p + 0.05, (1, 300)), _bernoulli(rng, clip_p, (1, 300))
    result = paired_bootstrap(a, b)
    d = (a - b)[0]
    assert result.standard_error == pytest.approx(d.std() / np.sqrt(d.size), rel=0.03)
    reference = _scipy_bootstrap(d)
    assert result.standard_error == pytest.approx(reference.standard_error, rel=0.03)
    low, high = reference.confidence_interval
    assert result.interval == pytest.approx((low, high), abs=0.01)
    # and the normal approximation: the percentile interval is close to observed ± 1.96 SE
    z = stats.norm.ppf(0.975)
    assert result.interval == pytest.approx((result.observed - z * result.standard_error,
                                             result.observed + z * result.standard_error), abs=0.01)


def test_two_level_standard_error_matches_the_exact_bootstrap_variance():
    """Resampling S rows and C columns of d = a - b, the replicated mean has variance
    mean(r^2)/S + mean(k^2)/C + mean(e^2)/(S C), with r the row effects, k the column effects and
    e the residual of the two-way decomposition of d (the cross terms vanish in expectation)."""
    rng = np.random.default_rng(2)
    seeds, clips = 5, 80
    seed_shift = rng.uniform(-0.15, 0.15, size=(seeds, 1))
    clip_p = rng.uniform(0.3, 0.7, size=clips)
    a, b = _bernoulli(rng, clip_p + seed_shift + 0.1, (seeds, clips)), _bernoulli(rng, clip_p, (seeds, clips))
    d = a - b
    rows, columns = d.mean(axis=1) - d.mean(), d.mean(axis=0) - d.mean()
    residual = d - d.mean() - rows[:, None] - columns[None, :]
    exact = np.sqrt((rows**2).mean() / seeds + (columns**2).mean() / clips + (residual**2).mean() / (seeds * clips))
    result = paired_bootstrap(a, b, replicates=20_000)
    assert result.standard_error == pytest.approx(exact, rel=0.03)
    # unpaired resampling (independent draws per method) would add the shared clip variance
    unpaired_var = sum(((x.mean(axis=0) - x.mean()) ** 2).mean() / clips for x in (a, b))
    assert unpaired_var > 1.2 * ((columns**2).mean() / clips)


def test_vectorized_and_per_replicate_statistics_agree():
    rng = np.random.default_rng(3)
    a = {"pgd_visual": _bernoulli(rng, 0.6, (3, 40)), "pgd_audio": _bernoulli(rng, 0.5, (3, 40))}
    b = {"pgd_visual": _bernoulli(rng, 0.8, (3, 40)), "pgd_audio": _bernoulli(rng, 0.3, (3, 40))}
    gap = absolute_gap("pgd_visual", "pgd_audio")
    fast = paired_bootstrap(a, b, gap, replicates=300, chunk_elements=1000)
    slow = paired_bootstrap(a, b, lambda x: float(gap(x)), replicates=300, vectorized=False)
    assert fast == slow
    expected = abs(a["pgd_visual"].mean() - a["pgd_audio"].mean()) - abs(b["pgd_visual"].mean() - b["pgd_audio"].mean())
    assert fast.observed == pytest.approx(expected)


def _simulate(rng: np.random.Generator, seeds: int, clips: int, effect: float, seed_spread: float):
    """Paired outcomes whose population difference is exactly ``effect``: clip difficulty shared by
    both methods, an independent uniform seed shift (mean 0) per method and seed."""
    clip_p = rng.uniform(0.3, 0.7, size=clips)
    shift_a = rng.uniform(-seed_spread, seed_spread, size=(seeds, 1))
    shift_b = rng.uniform(-seed_spread, seed_spread, size=(seeds, 1))
    return (_bernoulli(rng, clip_p + shift_a + effect, (seeds, clips)), _bernoulli(rng, clip_p + shift_b, (seeds, clips)))


@pytest.mark.parametrize(("seeds", "clips", "seed_spread"), [(1, 150, 0.0), (6, 40, 0.15)])
def test_interval_covers_the_true_difference_at_about_the_nominal_rate(seeds, clips, seed_spread):
    """Over 200 simulated data sets the 95% interval holds the true difference about 95% of the
    time (binomial test). Resampling only clips (or only seeds) misses the seed-level (clip-level)
    noise and covers ~80% (~5%) here."""
    rng = np.random.default_rng(4)
    effect, datasets = 0.1, 200
    hits = 0
    for index in range(datasets):
        a, b = _simulate(rng, seeds, clips, effect, seed_spread)
        low, high = paired_bootstrap(a, b, replicates=400, seed=index).interval
        hits += low <= effect <= high
    assert stats.binomtest(hits, datasets, 0.95).pvalue > 0.01, hits / datasets


def test_bootstrap_rejects_misaligned_outcomes():
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(np.zeros((2, 10)), np.zeros((2, 11)))
    with pytest.raises(ValueError, match="keys"):
        paired_bootstrap({"x": np.zeros((2, 3))}, {"y": np.zeros((2, 3))}, mean_accuracy)


# --- fake run folders --------------------------------------------------------------------------------------------------

ACCURACY = {  # per method: probability of being correct under each key
    "jt": {"clean": 0.9, "fgm": 0.5, "pgd": 0.3, "pgd_visual": 0.8, "pgd_audio": 0.2},
    "crmt_jt": {"clean": 0.95, "fgm": 0.85, "pgd": 0.8, "pgd_visual": 0.8, "pgd_audio": 0.75},
    "crmt_at": {"clean": 0.95, "fgm": 0.9, "pgd": 0.85, "pgd_visual": 0.85, "pgd_audio": 0.8},
}


SETTINGS = RobustnessSettings(curve_radii=(1.0, 2.0), radius_grid=(0.0, 0.5))
ADAPTIVE_SETTINGS = replace(SETTINGS, adaptive=AdaptiveSettings(suite="quick"))


def _write_run(
    folder: Path, name: str, seed: int, index: list[int] | None = None, certified: bool = True,
    labels: list[int] | None = None, modalities: list[str] = MODALITIES, adaptive: AdaptiveSummary | None = None,
) -> RobustnessMetrics:
    """A report folder as ``python -m crmt fit --report.output_dir`` leaves it (metrics, per-sample outcomes); returns its
    metrics. With ``adaptive``, the runs carry the adaptive threats too."""
    rng = np.random.default_rng([seed, len(name)])
    index = list(range(100, 160)) if index is None else index
    probabilities = ACCURACY.get(name, {}) if modalities == MODALITIES else {}
    settings = ADAPTIVE_SETTINGS if adaptive is not None else SETTINGS
    threats = settings.threats(modalities)
    correct = {t.key: (rng.random(len(index)) < probabilities.get(t.key, 0.6)).astype(int).tolist() for t in threats}
    labels = [i % 6 for i in index] if labels is None else labels
    order = rng.permutation(len(index))  # files need not be sorted by index
    per_sample = {
        "index": [index[i] for i in order], "label": [labels[i] for i in order],
        "correct": {key: [values[i] for i in order] for key, values in correct.items()},
    }
    everything, *single = Scope.every(modalities)
    curves = {everything: [0.9, 0.5 + 0.1 * seed, 0.2], **{scope: [0.9, 0.8 - 0.4 * i, 0.1] for i, scope in enumerate(single)}}
    certificate = None
    if certified:
        radius = rng.uniform(0.0, 1.0 + seed, size=len(modalities) + 1)
        summaries = {scope: RadiusSummary(r, r / 2, [0.9, 0.4]) for scope, r in zip([everything, *single], radius.tolist())}
        certificate = Certificate("estimated over the 60 test samples", [0.0, 0.5], summaries)
        per_sample["radius"] = rng.uniform(0, 1, size=len(index)).tolist()
    metrics = RobustnessMetrics(
        samples=len(index), modalities=list(modalities), settings=settings,
        accuracy={t: float(np.mean(correct[t.key])) for t in threats},
        curves=AccuracyCurves([0.0, *settings.curve_radii], curves), certified=certificate, adaptive=adaptive,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"name": name, **metrics.to_json()}), encoding="utf-8")
    (folder / "per_sample.json").write_text(json.dumps(per_sample), encoding="utf-8")
    return metrics


def _fake_runs(root: Path, names=("jt", "crmt_jt", "crmt_at"), seeds=(0, 1, 2)) -> dict[str, list[SeedRun]]:
    runs = {}
    for name in names:
        runs[name] = []
        for seed in seeds:
            folder = root / name / f"seed{seed}"
            _write_run(folder, name, seed, certified=name != "jt")
            (folder / "run.json").write_text(json.dumps({"wall_seconds": 10.0 + seed}), encoding="utf-8")
            runs[name].append(load_run(name, seed, folder))
    return runs


def test_tables_hold_numpy_mean_and_std_over_seeds(tmp_path):
    runs = _fake_runs(tmp_path)
    markdown, results_path = write_comparison(runs, tmp_path / "out", data="embedded", replicates=500)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    text = markdown.read_text(encoding="utf-8")
    assert results["seeds"] == [0, 1, 2] and results["test_clips"] == 60
    for name, seed_runs in runs.items():
        for key in KEYS:
            values = [next(v for t, v in run.metrics.accuracy.items() if t.key == key) for run in seed_runs]
            cell = results["accuracy"][name][key]
            assert cell["per_seed"] == values
            assert cell["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert cell["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        pgd = results["accuracy"][name]["pgd"]
        assert f"{np.mean(pgd['per_seed']):.3f} ± {np.std(pgd['per_seed'], ddof=1):.3f}" in text
    radii = [run.metrics.certified.radii[Scope(tuple(MODALITIES))].mean for run in runs["crmt_at"]]
    assert results["certified"]["crmt_at"]["multimodal"]["mean"] == pytest.approx(np.mean(radii))
    assert results["certified"]["crmt_at"]["multimodal"]["std"] == pytest.approx(np.std(radii, ddof=1))
    assert "jt" not in results["certified"] and results["certified_model"] == {}
    assert results["total_wall_seconds"] == pytest.approx(3 * (10 + 11 + 12))
    assert (tmp_path / "out" / "ablation.png").is_file()


def test_a_run_reads_back_the_typed_metrics_it_wrote(tmp_path):
    written = _write_run(tmp_path / "crmt_jt" / "seed1", "crmt_jt", 1)
    run = load_run("crmt_jt", 1, tmp_path / "crmt_jt" / "seed1")
    assert run.metrics == written
    pgd_audio = next(t for t in run.metrics.threats if t.kind == "pgd" and t.attacked == ("audio",))
    assert pgd_audio.budget == SETTINGS.unimodal_eps
    assert run.metrics.accuracy[pgd_audio] == np.mean(run.per_sample["correct"]["pgd_audio"])


def test_runs_with_and_without_smoothing_read_back_and_compare(tmp_path):
    """A metrics.json written before smoothing existed (no ``smoothing`` setting, no curves, no ``smoothed``
    section) and one with the smoothing certificates both read back into the metrics they hold."""
    runs: dict[str, list[SeedRun]] = {}
    for name, smoothed in (("jt", False), ("crmt_jt", True)):
        folder = tmp_path / name / "seed0"
        written = _write_run(folder, name, 0)
        document = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        if smoothed:
            smoothing = SmoothingSettings(sigma=1.0, n0=8, n=64, samples=60)
            curve = SurvivalCurve([0.0, 0.5, 1.25], [0.75, 0.75, 0.25])
            certificates = {scope: SmoothedCertificate(1.0, 8, 64, 0.001, 60, 0.125, SETTINGS.budget(scope), curve)
                            for scope in Scope.every(MODALITIES)}
            written = replace(written, settings=replace(SETTINGS, smoothing=smoothing), smoothed=certificates)
            document = {"name": name, **written.to_json()}
        else:
            del document["settings"]["smoothing"]
        (folder / "metrics.json").write_text(json.dumps(document), encoding="utf-8")
        runs[name] = [load_run(name, 0, folder)]
        assert runs[name][0].metrics == written
    smoothed = runs["crmt_jt"][0].metrics.smoothed
    assert smoothed[Scope(tuple(MODALITIES))].accuracy_at_budget == 0.75  # budget 0.5 in (0, 0.5]
    assert smoothed[Scope(("audio",))].accuracy_at_budget == 0.25  # budget 1.0 in (0.5, 1.25]
    markdown, _ = write_comparison(runs, tmp_path / "out", data="embedded", replicates=50)
    assert "| crmt_jt |" in markdown.read_text(encoding="utf-8")


def test_smoothing_summary_reads_both_curves_at_multiples_of_sigma(tmp_path):
    """Two seeds with hand-made smoothed and estimated curves: acc(r) read off each step function by hand."""
    smoothed_curves = [SurvivalCurve([0.0, 0.5, 1.25], [0.75, 0.75, 0.25]), SurvivalCurve([0.0, 2.0], [0.5, 0.5])]
    estimated_curves = [SurvivalCurve([0.0, 0.8, 3.0], [0.9, 0.6, 0.3]), SurvivalCurve([0.0, 1.0], [0.8, 0.4])]
    runs = {"crmt_jt": []}
    for seed, (smoothed_curve, estimated_curve) in enumerate(zip(smoothed_curves, estimated_curves, strict=True)):
        folder = tmp_path / "crmt_jt" / f"seed{seed}"
        written = _write_run(folder, "crmt_jt", seed)
        certified = replace(written.certified, radii={
            scope: replace(summary, curve=estimated_curve) for scope, summary in written.certified.radii.items()
        })
        certificates = {scope: SmoothedCertificate(1.0, 8, 64, 0.001, 60, 0.25 * seed, SETTINGS.budget(scope), smoothed_curve)
                        for scope in Scope.every(MODALITIES)}
        smoothing = SmoothingSettings(sigma=1.0, n0=8, n=64, samples=60)
        written = replace(written, settings=replace(SETTINGS, smoothing=smoothing), certified=certified, smoothed=certificates)
        (folder / "metrics.json").write_text(json.dumps({"name": "crmt_jt", **written.to_json()}), encoding="utf-8")
        runs["crmt_jt"].append(load_run("crmt_jt", seed, folder))
    markdown, results_path = write_comparison(runs, tmp_path / "out", data="embedded", replicates=50)
    joint = json.loads(results_path.read_text(encoding="utf-8"))["smoothed"]["crmt_jt"]["multimodal"]
    assert joint["radii"] == [0.5, 1.0, 2.0] and joint["certified_clips"] == [60, 60]
    # acc(r) is accuracy[j] for the first breakpoint r_j >= r, 0 beyond the last: seed 0 smoothed 0.75 on (0, 0.5],
    # 0.25 on (0.5, 1.25], 0 beyond; seed 1 smoothed 0.5 up to 2; estimated 0.6 / 0.3 / 0.3 and 0.4 / 0.4 / 0
    assert [cell["per_seed"] for cell in joint["smoothed"]] == [[0.75, 0.5], [0.25, 0.5], [0.0, 0.5]]
    assert [cell["per_seed"] for cell in joint["estimated"]] == [[0.6, 0.4], [0.3, 0.4], [0.3, 0.0]]
    assert joint["abstention_rate"]["per_seed"] == [0.0, 0.25]
    assert joint["smoothed"][1]["std"] == pytest.approx(np.std([0.25, 0.5], ddof=1))
    assert "| crmt_jt | joint | 60/60 | 0.125 ± 0.177 | 0.625 ± 0.177 |" in markdown.read_text(encoding="utf-8")


def _with_smoothing(folder: Path, name: str, seed: int, certified_share: float, clips: list[int], sigma: float = 1.0) -> dict:
    """Add smoothing certificates to the run in ``folder``: per scope, the listed test ``clips`` with a
    smoothed prediction (right, wrong or abstained) and a radius each, drawn so that about
    ``certified_share`` of them are right with radius >= sigma; returns the per-sample rows written."""
    rng = np.random.default_rng([seed, len(name), 7])
    per_sample = json.loads((folder / "per_sample.json").read_text(encoding="utf-8"))
    labels = dict(zip(per_sample["index"], per_sample["label"], strict=True))
    rows = {}
    for scope in Scope.every(MODALITIES):
        good = rng.random(len(clips)) < certified_share
        wrong = rng.random(len(clips)) < 0.5  # the others: a wrong class, or right but inside sigma
        prediction = [labels[i] if g or not w else (labels[i] + 1) % 6 for i, g, w in zip(clips, good, wrong, strict=True)]
        prediction = [-1 if not g and w and k % 5 == 0 else q for k, (q, g, w) in enumerate(zip(prediction, good, wrong, strict=True))]
        radius = np.where(good, rng.uniform(sigma, 3 * sigma, len(clips)), rng.uniform(0, 0.99 * sigma, len(clips)))
        order = rng.permutation(len(clips))
        rows[scope.key] = {"index": [clips[k] for k in order], "prediction": [prediction[k] for k in order],
                           "radius": radius[order].tolist()}
    per_sample["smoothed"] = rows
    (folder / "per_sample.json").write_text(json.dumps(per_sample), encoding="utf-8")
    document = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    metrics = RobustnessMetrics.from_json(document)
    curve = SurvivalCurve([0.0, sigma], [certified_share, certified_share])
    smoothed = {scope: SmoothedCertificate(sigma, 8, 64, 0.001, len(clips), 0.1, SETTINGS.budget(scope), curve)
                for scope in Scope.every(MODALITIES)}
    smoothing = SmoothingSettings(sigma=sigma, n0=8, n=64, samples=len(clips))
    metrics = replace(metrics, settings=replace(metrics.settings, smoothing=smoothing), smoothed=smoothed)
    (folder / "metrics.json").write_text(json.dumps({"name": name, **metrics.to_json()}), encoding="utf-8")
    return rows


def test_smoothing_orderings_are_judged_on_the_certified_clips(tmp_path):
    """CRMT-JT + noise right with radius >= sigma on ~85% of the certified clips, JT + noise on ~30%,
    JT and CRMT-JT on ~30%: the orderings' observed differences are the per-clip means computed here
    from the written rows, and the large effects hold while equal ones are within noise."""
    shares = {"jt": 0.3, "crmt_jt": 0.3, "jt_noise": 0.3, "crmt_jt_noise": 0.85}
    clips = list(range(100, 160, 2))  # 30 of the 60 test clips, as CERTIFY's evenly spaced subset
    runs, outcome = {}, {}
    for name, share in shares.items():
        runs[name], outcome[name] = [], {}
        for seed in (0, 1, 2):
            folder = tmp_path / name / f"seed{seed}"
            _write_run(folder, name, seed)
            rows = _with_smoothing(folder, name, seed, share, clips)
            labels = {i: i % 6 for i in clips}
            for key, row in rows.items():
                right = [(q == labels[i]) and r >= 1.0 for i, q, r in zip(row["index"], row["prediction"], row["radius"], strict=True)]
                outcome[name].setdefault(key, []).append(np.mean(right))
            runs[name].append(load_run(name, seed, folder))
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=500)
    claims = {claim["claim"]: claim for claim in json.loads(results_path.read_text(encoding="utf-8"))["smoothing_claims"]}
    assert len(claims) == 4 * 3  # 4 pairs x (joint, visual only, audio only)
    for (a, b), expected in [(("CRMT-JT + noise", "JT + noise"), "holds"), (("CRMT-JT + noise", "CRMT-JT"), "holds")]:
        claim = claims[f"{a} above {b}, smoothed certified accuracy, joint"]
        comparison = claim["comparisons"][0]
        name_a, name_b = comparison["a"], comparison["b"]
        assert comparison["value_a"] == pytest.approx(np.mean(outcome[name_a]["multimodal"]))
        assert comparison["bootstrap"]["observed"] == pytest.approx(
            np.mean(outcome[name_a]["multimodal"]) - np.mean(outcome[name_b]["multimodal"])
        )
        assert claim["verdict"] == expected
    assert claims["CRMT-JT above JT, smoothed certified accuracy, audio only"]["verdict"] == "within noise"
    text = markdown.read_text(encoding="utf-8")
    assert "| CRMT-JT + noise above JT + noise, smoothed certified accuracy, joint | holds | +" in text


def test_smoothing_orderings_refuse_different_certified_clips(tmp_path):
    runs = {}
    for name, clips in (("jt", list(range(100, 160, 2))), ("crmt_jt", list(range(101, 160, 2)))):
        folder = tmp_path / name / "seed0"
        _write_run(folder, name, 0)
        _with_smoothing(folder, name, 0, 0.5, clips)
        runs[name] = [load_run(name, 0, folder)]
    with pytest.raises(ValueError, match=r"smoothing certified different clips in .*jt/seed0/per_sample.json"):
        write_comparison(runs, tmp_path / "out", replicates=50)


def test_comparison_takes_its_columns_and_orderings_from_the_runs_threats(tmp_path):
    """Three modalities of other names: every column, radius and ordering follows the runs' own
    threats and modalities (and the two-modality gap ordering does not apply)."""
    modalities = ["rgb", "flow", "depth"]
    runs = {}
    for name in ("jt", "crmt_jt"):
        runs[name] = []
        for seed in (0, 1):
            folder = tmp_path / name / f"seed{seed}"
            _write_run(folder, name, seed, modalities=modalities)
            runs[name].append(load_run(name, seed, folder))
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=200)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    text = markdown.read_text(encoding="utf-8")
    assert results["threats"] == [t.to_json() for t in SETTINGS.threats(modalities)]
    assert list(results["accuracy"]["jt"]) == [
        "clean", "fgm", "pgd", "fgm_rgb", "pgd_rgb", "fgm_flow", "pgd_flow", "fgm_depth", "pgd_depth",
        "missing_rgb", "missing_flow", "missing_depth",
    ]
    values = [np.mean(run.per_sample["correct"]["pgd_flow"]) for run in runs["crmt_jt"]]
    assert results["accuracy"]["crmt_jt"]["pgd_flow"]["mean"] == pytest.approx(np.mean(values))
    assert "| method | Clean | FGM | PGD-l2 | FGM rgb | PGD-l2 rgb | FGM flow |" in text
    assert "| method | mean radius | mean radius rgb | mean radius flow | mean radius depth |" in text
    assert set(results["certified"]["jt"]) == {"lipschitz", "multimodal", "rgb", "flow", "depth"}
    claims = [claim["claim"] for claim in results["claims"]]
    assert claims == [
        "CRMT-JT above JT, clean", "CRMT-JT above JT, FGM", "CRMT-JT above JT, PGD-l2",
        "CRMT-JT above JT, uni-modal PGD-l2 on rgb", "CRMT-JT above JT, uni-modal PGD-l2 on flow",
        "CRMT-JT above JT, uni-modal PGD-l2 on depth",
        "CRMT-JT above JT, rgb missing", "CRMT-JT above JT, flow missing", "CRMT-JT above JT, depth missing",
    ]


def test_orderings_are_judged_on_the_paired_outcomes(tmp_path):
    runs = _fake_runs(tmp_path)
    _, results_path = write_comparison(runs, tmp_path / "out", replicates=500)
    claims = {claim["claim"]: claim for claim in json.loads(results_path.read_text(encoding="utf-8"))["claims"]}
    pgd = claims["CRMT-JT above JT, PGD-l2"]["comparisons"][0]
    per_sample = {
        name: np.array([[run.per_sample["correct"]["pgd"][i] for i in np.argsort(run.per_sample["index"])] for run in seed_runs])
        for name, seed_runs in runs.items()
    }
    assert pgd["bootstrap"]["observed"] == pytest.approx(per_sample["crmt_jt"].mean() - per_sample["jt"].mean())
    assert pgd["verdict"] == claims["CRMT-JT above JT, PGD-l2"]["verdict"] == "holds"  # 0.8 vs 0.3 on 180 clips
    assert claims["CRMT-AT above JT, FGM"]["verdict"] == "holds"
    gap = claims["gap between uni-modal PGD-l2 on visual and on audio smaller for CRMT-JT than JT"]
    assert gap["verdict"] == "holds" and gap["comparisons"][0]["bootstrap"]["observed"] < 0
    best = claims["CRMT-AT best under PGD-l2"]  # 0.85 vs 0.3 (holds) and vs 0.8 (within noise at 180 clips)
    assert [c["b"] for c in best["comparisons"]] == ["jt", "crmt_jt"]
    assert best["comparisons"][0]["verdict"] == "holds"
    assert best["verdict"] == overall_verdict([c["verdict"] for c in best["comparisons"]])


def test_orderings_are_judged_on_the_adaptive_evaluation_with_the_papers_protocol_beside(tmp_path):
    """With adaptive threats in the runs, every attack ordering is judged on them and listed first; the same
    orderings on the paper's FGM and PGD follow, labelled as the paper's protocol; raised checks are tabled."""
    ACCURACY["jt"].update({"adaptive": 0.1, "adaptive_visual": 0.5, "adaptive_audio": 0.1})
    ACCURACY["crmt_jt"].update({"adaptive": 0.15, "adaptive_visual": 0.6, "adaptive_audio": 0.5})
    runs = {}
    try:
        for name in ("jt", "crmt_jt"):
            runs[name] = []
            for seed in (0, 1):
                scopes = Scope.every(MODALITIES)
                checks = [SanityCheck("black_box", 2 if (name, seed) == ("jt", 1) else 0, 50)]
                summary = AdaptiveSummary("quick", SUITES["quick"], ["apgd-ce", "apgd-t", "square"],
                                          {scope: {"apgd-ce": 10, "apgd-t": 2, "square": 0, "standing": 38} for scope in scopes}, checks)
                folder = tmp_path / name / f"seed{seed}"
                _write_run(folder, name, seed, adaptive=summary)
                runs[name].append(load_run(name, seed, folder))
    finally:
        for name in ("jt", "crmt_jt"):
            for key in ("adaptive", "adaptive_visual", "adaptive_audio"):
                ACCURACY[name].pop(key)
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=300)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    protocols = {claim["claim"]: claim["protocol"] for claim in results["claims"]}
    assert protocols["CRMT-JT above JT, Adaptive"] == protocols["CRMT-JT above JT, uni-modal Adaptive on audio"] == "adaptive"
    assert protocols["CRMT-JT above JT, clean"] == protocols["CRMT-JT above JT, visual missing"] == "adaptive"
    assert protocols["CRMT-JT above JT, PGD-l2"] == protocols["CRMT-JT above JT, FGM"] == "paper"
    assert protocols["gap between uni-modal Adaptive on visual and on audio smaller for CRMT-JT than JT"] == "adaptive"
    text = markdown.read_text(encoding="utf-8")
    judged, reference = text.split("### The same orderings under the paper's attack protocol")
    assert "| CRMT-JT above JT, Adaptive |" in judged and "| CRMT-JT above JT, PGD-l2 |" not in judged
    assert "| CRMT-JT above JT, PGD-l2 |" in reference and "Adaptive" not in reference.split("## Wall time")[0]
    assert results["adaptive"]["jt"]["flags"] == {"0": [], "1": ["black_box"]}
    assert "seed 0: none; seed 1: black_box" in text and "| Adaptive |" in text


@pytest.mark.parametrize(
    ("index", "labels", "message"),
    [(list(range(101, 161)), [0] * 60, "indices differ"), (list(range(100, 160)), [i % 5 for i in range(100, 160)], "labels differ")],
)
def test_unpaired_test_sets_are_refused_naming_the_files(tmp_path, index, labels, message):
    first = tmp_path / "first" / "jt" / "seed0"
    _write_run(first, "jt", 0, labels=[0] * 60)
    other = tmp_path / "other" / "crmt_jt" / "seed0"
    _write_run(other, "crmt_jt", 0, index=index, labels=labels)
    runs = {"jt": [load_run("jt", 0, first)], "crmt_jt": [load_run("crmt_jt", 0, other)]}
    with pytest.raises(ValueError, match=f"{message}.*refusing to pair") as error:
        pair_outcomes(runs)
    assert str(first / "per_sample.json") in str(error.value)
    assert str(other / "per_sample.json") in str(error.value)


def test_seeds_with_different_clip_counts_are_refused(tmp_path):
    runs = _fake_runs(tmp_path, names=("jt",), seeds=(0,))
    short = tmp_path / "short" / "jt" / "seed1"
    _write_run(short, "jt", 1, index=list(range(50)))
    runs["jt"].append(load_run("jt", 1, short))
    with pytest.raises(ValueError, match="clip counts differ"):
        pair_outcomes(runs)


# --- runs: reuse, failures, configs ------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project tree with experiments/ and a fake ``python -m crmt fit`` that writes a report."""
    root = tmp_path / "project"
    (root / "experiments" / "data").mkdir(parents=True)
    (root / "experiments" / "defaults.yaml").write_text("seed_everything: 0\n", encoding="utf-8")
    for name in ACCURACY:
        (root / "experiments" / f"{name}.yaml").write_text(f"# {name}\n", encoding="utf-8")
    (root / "experiments" / "data" / "embedded.yaml").write_text("data: {}\n", encoding="utf-8")
    monkeypatch.setattr(compare, "PROJECT_ROOT", root)
    monkeypatch.setattr(compare, "EXPERIMENTS_DIR", root / "experiments")
    monkeypatch.setattr(compare, "DEFAULTS_FILE", root / "experiments" / "defaults.yaml")
    monkeypatch.chdir(root)
    return root


class FakeTraining:
    """Stands in for the training subprocess: records each command and writes the report it asked for."""

    def __init__(self, exit_code: int = 0) -> None:
        self.commands: list[list[str]] = []
        self.exit_code = exit_code

    def __call__(self, command, log: Path) -> int:
        self.commands.append(list(command))
        Path(log).write_text("fake training\n", encoding="utf-8")
        if self.exit_code == 0:
            folder = Path(command[command.index("--report.output_dir") + 1])
            name = Path(command[command.index("--config") + 1]).stem
            _write_run(folder, name, int(command[command.index("--seed_everything") + 1]))
        return self.exit_code


def test_unchanged_runs_are_reused_and_changes_trigger_reruns(project, monkeypatch, capsys):
    fake = FakeTraining()
    monkeypatch.setattr(compare, "launch", fake)
    out = Path("runs/compare/embedded")

    def run(extra=(), force=False, data="embedded", suite="standard"):
        compare.run_all(["jt"], [0, 1], out, data, extra, force, suite)
        return capsys.readouterr().out

    run()
    assert len(fake.commands) == 2
    assert fake.commands[0][1:] == [
        "-m", "crmt", "fit", "--config", "experiments/jt.yaml", "--config", "experiments/data/embedded.yaml",
        "--seed_everything", "0", "--report.output_dir", str(out / "jt" / "seed0"),
        "--report.settings.adaptive.suite", "standard",
    ]
    record = json.loads((out / "jt" / "seed0" / "run.json").read_text(encoding="utf-8"))
    assert record["arguments"] == fake.commands[0][1:]
    assert record["config_sha256"] == {
        **{
            f"experiments/{f}": hashlib.sha256((project / "experiments" / f).read_bytes()).hexdigest()
            for f in ("defaults.yaml", "jt.yaml", "data/embedded.yaml")
        },
        compare.CODE_KEY: hashlib.sha256().hexdigest(),  # the fake project has no code yet
    }
    assert compare.load_run("jt", 0, out / "jt" / "seed0").wall_seconds == record["wall_seconds"]

    assert "reusing" in run() and len(fake.commands) == 2
    (project / "experiments" / "jt.yaml").write_text("# jt\n", encoding="utf-8")  # rewritten, same content
    assert "reusing" in run() and len(fake.commands) == 2

    printed = run(extra=["--trainer.max_epochs", "2"])
    assert len(fake.commands) == 4 and "arguments changed" in printed

    (project / "experiments" / "defaults.yaml").write_text("seed_everything: 1\n", encoding="utf-8")
    printed = run(extra=["--trainer.max_epochs", "2"])
    assert len(fake.commands) == 6 and "config files changed: experiments/defaults.yaml" in printed

    (project / "experiments" / "data" / "embedded.yaml").write_text("data: {x: 1}\n", encoding="utf-8")
    printed = run(extra=["--trainer.max_epochs", "2"])
    assert len(fake.commands) == 8 and "experiments/data/embedded.yaml" in printed

    assert "reusing" in run(extra=["--trainer.max_epochs", "2"]) and len(fake.commands) == 8
    assert "--force" in run(extra=["--trainer.max_epochs", "2"], force=True) and len(fake.commands) == 10
    printed = run(extra=["--trainer.max_epochs", "2"], suite="quick")
    assert "arguments changed" in printed and "adaptive.suite quick" in printed and len(fake.commands) == 12
    run(extra=["--trainer.max_epochs", "2"])

    (project / "data_modules").mkdir()
    (project / "data_modules" / "synthetic.py").write_text("VISUAL_JITTER = 0.7\n", encoding="utf-8")
    printed = run(extra=["--trainer.max_epochs", "2"])  # a changed default in code changes the data
    assert len(fake.commands) == 16 and f"config files changed: {compare.CODE_KEY}" in printed
    (project / "src" / "crmt").mkdir(parents=True)
    (project / "src" / "crmt" / "compare_report.py").write_text("# reads finished runs\n", encoding="utf-8")
    assert "reusing" in run(extra=["--trainer.max_epochs", "2"]), "the comparison's own code is not part of a run"
    (project / "src" / "crmt" / "power.py").write_text("# projects finished runs\n", encoding="utf-8")
    assert "reusing" in run(extra=["--trainer.max_epochs", "2"]), "nor is the power projection's"
    (project / "src" / "crmt" / "losses.py").write_text("# a training module\n", encoding="utf-8")
    assert "config files changed" in run(extra=["--trainer.max_epochs", "2"]) and len(fake.commands) == 18


def test_a_failed_run_points_at_its_log_and_is_not_reused(project, monkeypatch):
    monkeypatch.setattr(compare, "launch", FakeTraining(exit_code=1))
    with pytest.raises(RuntimeError, match="train.log") as error:
        compare.run_all(["jt"], [0], Path("out"))
    assert str(Path("out") / "jt" / "seed0" / "train.log") in str(error.value)
    assert not (project / "out" / "jt" / "seed0" / "run.json").exists()
    assert compare.rerun_reason(compare.plan_run("jt", 0, Path("out"))).startswith("no run.json")


def test_missing_configs_are_named_before_anything_runs(project, monkeypatch):
    fake = FakeTraining()
    monkeypatch.setattr(compare, "launch", fake)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        compare.run_all(["jt", "nope"], [0], Path("out"))
    with pytest.raises(FileNotFoundError, match=r"data configs: embedded"):
        compare.run_all(["jt"], [0], Path("out"), data="embedded_nope")
    assert fake.commands == []


def test_main_writes_the_comparison_of_seeded_runs(project, monkeypatch):
    fake = FakeTraining()
    monkeypatch.setattr(compare, "launch", fake)
    markdown = compare.main(["jt", "crmt_jt", "--seed-list", "3", "5", "--data", "embedded", "--replicates", "200"])
    assert markdown == Path("runs/compare/embedded/compare.md")
    assert sorted(c[c.index("--seed_everything") + 1] for c in fake.commands) == ["3", "3", "5", "5"]
    results = json.loads(markdown.with_name("compare.json").read_text(encoding="utf-8"))
    assert results["seeds"] == [3, 5] and results["bootstrap"]["replicates"] == 200
    assert "S = 2 seed(s) (3, 5)" in markdown.read_text(encoding="utf-8")
    with pytest.raises(SystemExit):
        compare.main(["jt", "--seeds", "2", "--seed-list", "1"])


# --- power: the detectable difference beside each verdict, the seeds needed ----------------------------------------------

Z975, Z80 = 1.959963984540054, 0.8416212335729143


def test_each_verdict_states_the_difference_it_could_have_detected(tmp_path):
    """compare.json: per comparison, (z_0.975 + z_0.80) x its bootstrap SE, and "underpowered" when within noise
    below it; compare.md: that number in the column "detectable at 80% power" beside the verdict."""
    runs = _fake_runs(tmp_path)
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=500)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    text = markdown.read_text(encoding="utf-8")
    assert "| ordering | verdict | difference | 95% interval | SE | detectable at 80% power | statistic |" in text
    for claim in results["claims"]:
        for comparison in claim["comparisons"]:
            result = comparison["bootstrap"]
            assert comparison["detectable_at_80_power"] == pytest.approx((Z975 + Z80) * result["standard_error"], rel=1e-9)
            assert comparison["underpowered"] == (
                comparison["verdict"] == "within noise" and abs(result["observed"]) < comparison["detectable_at_80_power"]
            )
    claims = {claim["claim"]: claim["comparisons"][0] for claim in results["claims"]}

    def row(name: str) -> str:
        comparison = claims[name]
        result = comparison["bootstrap"]
        low, high = result["interval"]
        label = comparison["verdict"] + (" (underpowered)" if comparison["underpowered"] else "")
        return (f"| {name} | {label} | {result['observed']:+.3f} | [{low:+.3f}, {high:+.3f}] | "
                f"{result['standard_error']:.3f} | {(Z975 + Z80) * result['standard_error']:.3f} |")

    clean = claims["CRMT-JT above JT, clean"]  # 0.95 vs 0.9 on 3 x 60 clips: too small a difference for this run
    assert clean["verdict"] == "within noise" and clean["underpowered"]
    assert row("CRMT-JT above JT, clean").startswith("| CRMT-JT above JT, clean | within noise (underpowered) |")
    pgd = claims["CRMT-JT above JT, PGD-l2"]  # 0.8 vs 0.3
    assert pgd["verdict"] == "holds" and not pgd["underpowered"]
    for name in ("CRMT-JT above JT, clean", "CRMT-JT above JT, PGD-l2", "CRMT-AT above JT, FGM"):
        assert row(name) in text
    gap = "gap between uni-modal PGD-l2 on visual and on audio smaller for CRMT-JT than JT"
    assert f"| {gap} | " in text and "\\|acc(pgd_visual) - acc(pgd_audio)\\|" in text  # the pipes escaped


def _components_by_hand(d: np.ndarray) -> tuple[float, float, float]:
    """tau2, kappa2, sigma2 of an (S, N) array by the two-way ANOVA's sums of squares."""
    seeds, clips = d.shape
    total = d.mean()
    ss_seed = clips * sum((row.mean() - total) ** 2 for row in d)
    ss_clip = seeds * sum((column.mean() - total) ** 2 for column in d.T)
    ss_residual = ((d - total) ** 2).sum() - ss_seed - ss_clip
    ms_residual = ss_residual / ((seeds - 1) * (clips - 1))
    return (max(0.0, (ss_seed / (seeds - 1) - ms_residual) / clips),
            max(0.0, (ss_clip / (clips - 1) - ms_residual) / seeds), ms_residual)


def test_compare_md_ends_with_the_seeds_each_headline_ordering_needs(tmp_path):
    runs = _fake_runs(tmp_path)
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=300)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    text = markdown.read_text(encoding="utf-8")
    last = text.split("\n## ")[-1]
    assert last.startswith("Seeds needed\n") and "| seeds needed (80% power) |" in last
    power = results["power"]
    assert [(o["a"], o["b"], o["key"]) for o in power["orderings"]] == [
        ("crmt_jt", "jt", "clean"), ("crmt_jt", "jt", "pgd"), ("crmt_at", "jt", "clean"), ("crmt_at", "jt", "pgd"),
    ]  # the fake runs have no adaptive evaluation
    assert power["cost_per_seed_seconds"] == pytest.approx(3 * 11.0)  # wall times 10, 11, 12 s per method
    outcomes = pair_outcomes(runs)
    for ordering in power["orderings"]:
        d = outcomes.correct[ordering["a"]][ordering["key"]] - outcomes.correct[ordering["b"]][ordering["key"]]
        tau2, kappa2, sigma2 = _components_by_hand(d)
        assert (ordering["components"]["seed"], ordering["components"]["clip"], ordering["components"]["residual"]) == \
            pytest.approx((tau2, kappa2, sigma2), rel=1e-9, abs=1e-12)

        def detectable(s: int, n: int = 60, tau2=tau2, kappa2=kappa2, sigma2=sigma2) -> float:
            boot = tau2 * (s - 1) / s**2 + kappa2 * (n - 1) / n**2 + sigma2 * (3 * s * n - 2 * s - 2 * n + 1) / (s * n) ** 2
            return Z975 * np.sqrt(boot) + Z80 * np.sqrt(tau2 / s + kappa2 / n + sigma2 / (s * n))

        needed = next((s for s in range(2, 201) if detectable(s) <= abs(d.mean())), None)
        assert ordering["seeds_needed"] == needed
        label = {"clean": "clean", "pgd": "PGD-l2 (paper, joint)"}[ordering["key"]]
        name = f"{'CRMT-JT' if ordering['a'] == 'crmt_jt' else 'CRMT-AT'} above JT, {label}"
        cells = " | ".join(f"{detectable(s):.3f}" for s in (3, 5, 8, 12, 20))
        assert f"| {name} | {d.mean():+.3f} | {cells} | " in last
    pgd = next(o for o in power["orderings"] if o["a"] == "crmt_jt" and o["key"] == "pgd")
    assert pgd["seeds_needed"] == 2  # 0.8 vs 0.3: settled by 2 seeds already


def test_one_seed_cannot_project_the_seeds_needed(tmp_path):
    runs = _fake_runs(tmp_path, seeds=(0,))
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=100)
    assert json.loads(results_path.read_text(encoding="utf-8"))["power"]["orderings"] == []
    assert "one seed cannot tell the seed-to-seed variance" in markdown.read_text(encoding="utf-8").split("## Seeds needed")[1]


def test_power_cli_reads_a_comparison_folder(tmp_path, capsys):
    from crmt import power
    from crmt.compare_report import load_comparison_runs

    runs = _fake_runs(tmp_path)
    (tmp_path / "jt" / "seed3").mkdir()  # an unfinished run of one method: not a common seed
    loaded = load_comparison_runs(tmp_path)
    assert list(loaded) == ["jt", "crmt_jt", "crmt_at"] and [run.seed for run in loaded["jt"]] == [0, 1, 2]
    assert loaded["crmt_at"][1].per_sample == runs["crmt_at"][1].per_sample
    with pytest.raises(FileNotFoundError, match="ojt"):
        load_comparison_runs(tmp_path, ["jt", "ojt"])
    text = power.main([str(tmp_path), "--seeds", "3", "5", "--check", "--replicates", "300"])
    assert text == capsys.readouterr().out.rstrip("\n")
    outcomes = pair_outcomes(runs)
    d = outcomes.correct["crmt_at"]["pgd"] - outcomes.correct["jt"]["pgd"]
    assert f"CRMT-AT above JT, PGD-l2 (paper, joint): difference {d.mean():+.3f} on S = 3 x N = 60" in text
    assert text.count("check, S = 2 of 3: bootstrap SE per subset") == 4
    assert "33 s of recorded run time per seed" in text


def test_preference_claims_judge_the_attack_on_the_preferred_modality_within_each_method():
    """JT's accuracy under the audio attack is lower on every clip where it differs (holds, with the observed
    difference the plain mean difference); a method with equal accuracies is within noise; missing likewise."""
    rng = np.random.default_rng(0)
    seeds, clips = 3, 200
    strong = (rng.random((seeds, clips)) < 0.8).astype(float)
    weak = strong * (rng.random((seeds, clips)) < 0.5)
    correct = {
        "jt": {"pgd_visual": strong, "pgd_audio": weak, "missing_visual": strong, "missing_audio": weak},
        "crmt_jt": {"pgd_visual": strong, "pgd_audio": strong, "missing_visual": strong, "missing_audio": strong},
    }
    outcomes = PairedOutcomes(list(range(seeds)), np.tile(np.arange(clips), (seeds, 1)), correct)
    threats = [Threat("pgd", ("visual",), 8.0), Threat("pgd", ("audio",), 8.0),
               Threat("missing", ("visual",)), Threat("missing", ("audio",))]
    claims = {claim.text: claim for claim in preference_claims(outcomes, threats, replicates=500)}
    jt = claims["JT: uni-modal PGD-l2 on audio more effective than on visual"]
    assert jt.verdict == "holds" and jt.protocol == "paper"
    assert jt.comparisons[0].bootstrap.observed == pytest.approx(strong.mean() - weak.mean())
    assert claims["JT: losing audio costs more than losing visual"].verdict == "holds"
    assert claims["CRMT-JT: uni-modal PGD-l2 on audio more effective than on visual"].verdict == "within noise"
    assert preference_claims(outcomes, threats, preferred="depth", replicates=50) == []


def _add_sound_radii(run: SeedRun, shift: float) -> dict[str, np.ndarray]:
    """Give a fake run sound radii (per scope, 0 where the clean clip is wrong) in metrics.json and per_sample.json,
    as the report writes them; returns them in dataset-index order."""
    import torch

    per_sample = json.loads((run.folder / "per_sample.json").read_text(encoding="utf-8"))
    metrics = json.loads((run.folder / "metrics.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng([run.seed, len(run.name), 7])
    correct = np.asarray(per_sample["correct"]["clean"], dtype=bool)
    radii, summaries, outcomes = {}, {}, {}
    for scope in Scope.every(MODALITIES):
        radius = np.where(correct, rng.uniform(0.0, 1.2, size=correct.size) + shift, 0.0)
        budget = SETTINGS.budget(scope)
        summaries[scope] = RadiusSummary.of(torch.tensor(radius), torch.tensor(correct), [0.0, 0.5])
        outcomes[scope.key] = (radius >= budget).astype(int).tolist()
        outcomes[f"{scope.key}_half"] = (radius >= budget / 2).astype(int).tolist()
        radii[scope.key] = radius[np.argsort(per_sample["index"], kind="stable")]
    per_sample["sound_certified"] = outcomes
    metrics["certified_sound"] = Certificate("sound (1-Lipschitz encoders)", [0.0, 0.5], summaries).to_json()
    (run.folder / "per_sample.json").write_text(json.dumps(per_sample), encoding="utf-8")
    (run.folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return radii


def test_sound_certified_accuracy_is_summarized_and_judged_from_the_per_clip_radii(tmp_path):
    runs = _fake_runs(tmp_path, names=("jt", "crmt_jt"))
    radii = {name: [_add_sound_radii(run, shift) for run in seed_runs]
             for (name, seed_runs), shift in zip(runs.items(), (0.0, 0.3), strict=True)}
    runs = {name: [load_run(name, run.seed, run.folder) for run in seed_runs] for name, seed_runs in runs.items()}
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=500)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    for name in runs:
        for key, budget in (("multimodal", 0.5), ("visual", 1.0)):
            scope = results["sound"][name]["scopes"][key]
            expected = [float(np.mean(per_seed[key] >= budget)) for per_seed in radii[name]]
            assert scope["at_budget"]["per_seed"] == pytest.approx(expected)
            halves = [float(np.mean(per_seed[key] >= budget / 2)) for per_seed in radii[name]]
            assert scope["at_half_budget"]["per_seed"] == pytest.approx(halves)
    claims = {claim["claim"]: claim for claim in results["sound_claims"]}
    joint = claims["CRMT-JT above JT, sound certified accuracy at the budget (joint)"]["comparisons"][0]
    difference = np.mean([np.mean(a["multimodal"] >= 0.5) - np.mean(b["multimodal"] >= 0.5)
                          for a, b in zip(radii["crmt_jt"], radii["jt"], strict=True)])
    assert joint["bootstrap"]["observed"] == pytest.approx(difference)
    assert len(claims) == 6  # joint and each modality, at the budget and at half of it
    assert "## Sound certified accuracy (1-Lipschitz encoders)" in markdown.read_text(encoding="utf-8")


def test_each_crmt_variant_is_judged_against_the_method_it_extends(tmp_path):
    """Tables 1-3: CRMT-AT above MMAT and CRMT-Mix above Mixup, from the same per-clip outcomes as the other orderings;
    CRMT-Mix is never judged against JT, nor MMAT against anything."""
    runs = _fake_runs(tmp_path, names=("jt", "mmat", "mixup", "crmt_at", "crmt_mix"), seeds=(0, 1))
    _, results_path = write_comparison(runs, tmp_path / "out", replicates=200)
    claims = {claim["claim"]: claim for claim in json.loads(results_path.read_text(encoding="utf-8"))["claims"]}
    outcomes = pair_outcomes(runs)
    for a, b, text in (("crmt_at", "mmat", "CRMT-AT above MMAT, clean"), ("crmt_mix", "mixup", "CRMT-Mix above Mixup, clean")):
        observed = claims[text]["comparisons"][0]["bootstrap"]["observed"]
        assert observed == pytest.approx(outcomes.correct[a]["clean"].mean() - outcomes.correct[b]["clean"].mean())
    assert "gap between uni-modal PGD-l2 on visual and on audio smaller for CRMT-Mix than Mixup" in claims
    assert not any(text.startswith(("CRMT-Mix above JT", "MMAT above")) for text in claims)


def test_a_radius_where_neither_method_certifies_anything_is_not_judged(tmp_path):
    runs = _fake_runs(tmp_path, names=("jt", "crmt_jt"), seeds=(0, 1))
    for seed_runs in runs.values():
        for run in seed_runs:
            _add_sound_radii(run, shift=-5.0)  # every radius 0
    runs = {name: [load_run(name, run.seed, run.folder) for run in seed_runs] for name, seed_runs in runs.items()}
    markdown, results_path = write_comparison(runs, tmp_path / "out", replicates=200)
    assert json.loads(results_path.read_text(encoding="utf-8"))["sound_claims"] == []
    assert "neither method of a pair certifies any clip" in markdown.read_text(encoding="utf-8")
