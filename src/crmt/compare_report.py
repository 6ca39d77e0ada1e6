"""The results of a multi-seed comparison (``python -m crmt.compare``): finished runs loaded and
paired by test clip, mean ± std tables over seeds, the paper's orderings judged by the paired
two-level bootstrap of :mod:`crmt.statistics` (each beside the difference it could have detected at
80% power), the seeds the headline orderings need (:mod:`crmt.power`), and the files ``compare.md``,
``compare.json`` and ``ablation.png``.

Every function here reads finished run folders (``metrics.json``, ``per_sample.json``, ``run.json``)
and trains nothing; :mod:`crmt.compare` runs the experiments.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crmt.power import (
    PROJECTED_SEEDS,
    OrderingPower,
    cost_per_seed,
    headline_power,
    projection_table,
)
from crmt.robustness.figures import plot_accuracy_vs_radius
from crmt.robustness.report import markdown_table
from crmt.robustness.results import Certificate, RobustnessMetrics
from crmt.robustness.threats import KIND_TITLES, MULTIMODAL_KEY, Scope, Threat
from crmt.statistics import (
    POWER,
    SIGNIFICANCE,
    BootstrapResult,
    Statistic,
    Verdict,
    absolute_gap,
    mean_accuracy,
    minimum_detectable_difference,
    overall_verdict,
    paired_bootstrap,
    seed_mean_std,
    verdict,
)

ABLATION = ("jt", "ojt", "crmt_step1", "crmt_step2", "crmt_jt")
"""The models of the paper's ablation figure (Figure 5)."""
LABELS = {
    "jt": "JT", "crmt_jt": "CRMT-JT", "crmt_at": "CRMT-AT", "jt_noise": "JT + noise", "crmt_jt_noise": "CRMT-JT + noise",
    "mmat": "MMAT", "mixup": "Mixup", "crmt_mix": "CRMT-Mix", "mmt": "MMT", "crmt_mmt": "CRMT-MMT",
}
"""How the orderings name the models they are about."""
CRMT_PAIRS = (("crmt_jt", "jt"), ("crmt_at", "jt"), ("crmt_at", "mmat"), ("crmt_mix", "mixup"), ("crmt_mmt", "mmt"))
"""(CRMT variant, the method it is combined with or compared to): the paper's Tables 1-3 (CRMT-JT and CRMT-AT
against JT, CRMT-AT against MMAT, CRMT-Mix against Mixup, Table 1 and 2; CRMT-MMT against MMT, Table 3)."""
SMOOTHING_ORDERINGS = (("crmt_jt", "jt"), ("crmt_jt_noise", "jt_noise"), ("jt_noise", "jt"), ("crmt_jt_noise", "crmt_jt"))
"""Pairs (a, b) judged on smoothed certified accuracy, a above b, where both ran with smoothing: CRMT
against JT without and with noise training, and noise training against none."""
SOUND_PREFIX = "sound_"
"""The prefix of the sound-certificate outcome columns of :class:`PairedOutcomes`."""
SMOOTHING_JUDGED_AT = 1.0
"""The radius, as a multiple of the smoothing sigma, at which the smoothing orderings are judged."""
TEST_DESCRIPTION = (
    "Each ordering is judged by a paired two-level bootstrap of the difference between the two methods "
    "(A - B): every replicate resamples the seeds and the test clips with replacement, with the same draws "
    "for both methods, and recomputes the statistic of each; the interval is the 2.5th-97.5th percentile "
    "of the replicated differences. holds: the interval lies entirely on the claimed side of 0; reversed: "
    "entirely on the other side; within noise: it contains 0."
)
DETECTABLE_DESCRIPTION = (
    f"Detectable at {POWER:.0%} power: (z_{1 - SIGNIFICANCE / 2:g} + z_{POWER:g}) x SE = "
    f"{minimum_detectable_difference(1.0):.2f} SE, the smallest true difference that this run would have "
    f"settled (holds or reversed) with probability {POWER:.0%} at the two-sided {SIGNIFICANCE:.0%} level, "
    "assuming the bootstrap distribution of the difference is about normal. \"within noise (underpowered)\": "
    "the observed difference is smaller than that, so the run could not have detected a difference of its "
    "size; it is no evidence that the methods are equal."
)


@dataclass(frozen=True)
class SeedRun:
    """One finished (experiment, seed) run: its folder, its report's ``metrics.json`` (typed) and
    ``per_sample.json``, and the wall time recorded in its ``run.json`` (None if not recorded)."""

    name: str
    seed: int
    folder: Path
    metrics: RobustnessMetrics
    per_sample: dict
    wall_seconds: float | None = None


def load_run(name: str, seed: int, folder: Path) -> SeedRun:
    """Read a finished run folder."""
    folder = Path(folder)
    metrics = RobustnessMetrics.from_json(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
    per_sample = json.loads((folder / "per_sample.json").read_text(encoding="utf-8"))
    record_path = folder / "run.json"
    wall = None
    if record_path.is_file():
        wall = json.loads(record_path.read_text(encoding="utf-8")).get("wall_seconds")
    return SeedRun(name, seed, folder, metrics, per_sample, wall)


def load_comparison_runs(folder: Path, names: Sequence[str] | None = None) -> dict[str, list[SeedRun]]:
    """The finished runs of a comparison's output folder, ``<folder>/<name>/seed<s>/`` holding
    ``metrics.json`` and ``per_sample.json``: per experiment (``names``, default every one found: those
    of :data:`LABELS` in its order, then the others by name), its runs of the seeds that every
    experiment has, in increasing seed order."""
    folder = Path(folder)
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.glob("*/seed*/per_sample.json")):
        run = path.parent
        suffix = run.name.removeprefix("seed")
        if suffix.isdigit() and (run / "metrics.json").is_file():
            found.setdefault(run.parent.name, {})[int(suffix)] = run
    known = list(LABELS)
    chosen = list(names) if names else sorted(found, key=lambda n: (n not in known, known.index(n) if n in known else 0, n))
    missing = [name for name in chosen if name not in found]
    if not chosen or missing:
        raise FileNotFoundError(f"no finished runs of {missing or 'any experiment'} under {folder}")
    seeds = sorted(set.intersection(*(set(found[name]) for name in chosen)))
    if not seeds:
        raise FileNotFoundError(f"the experiments under {folder} share no seed")
    return {name: [load_run(name, seed, found[name][seed]) for seed in seeds] for name in chosen}


@dataclass(frozen=True)
class PairedOutcomes:
    """Per-sample outcomes of every method, aligned: row i is ``seeds[i]``, column j the j-th test
    clip of that seed in increasing dataset index (``index`` (S, C)). ``correct[method][key]`` is
    an (S, C) 0/1 array per attack key of ``per_sample.json`` (clean, fgm, pgd, pgd_<m>, ...) and, for
    methods with sound radii, per ``sound_certified`` key with the prefix ``sound_`` (sound_multimodal,
    sound_multimodal_half, sound_<m>, ...)."""

    seeds: list[int]
    index: np.ndarray
    correct: dict[str, dict[str, np.ndarray]]

    @property
    def clips(self) -> int:
        return int(self.index.shape[1])


def common_seeds(runs: Mapping[str, Sequence[SeedRun]]) -> list[int]:
    """The seeds every method was run for, in run order; ``ValueError`` when there are no runs or the
    methods' seeds differ (paired statistics need the same seeds)."""
    names = list(runs)
    if not names:
        raise ValueError("no runs to pair")
    seeds = [run.seed for run in runs[names[0]]]
    for name in names:
        if [run.seed for run in runs[name]] != seeds:
            raise ValueError(f"{name} was run for seeds {[r.seed for r in runs[name]]}, {names[0]} for {seeds}")
    return seeds


def pair_outcomes(runs: Mapping[str, Sequence[SeedRun]]) -> PairedOutcomes:
    """Align the ``per_sample.json`` of every method by seed and by dataset index.

    Raises ``ValueError`` (naming the files) when two methods' runs of one seed hold different
    test indices or labels, when a file repeats an index, or when seeds differ in clip count
    (the bootstrap draws the same clip positions for every seed).
    """
    names = list(runs)
    seeds = common_seeds(runs)
    index_rows: list[np.ndarray] = []
    correct: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in names}
    for position, seed in enumerate(seeds):
        reference: tuple[Path, np.ndarray, np.ndarray] | None = None
        for name in names:
            run = runs[name][position]
            path = run.folder / "per_sample.json"
            index = np.asarray(run.per_sample["index"], dtype=np.int64)
            if np.unique(index).size != index.size:
                raise ValueError(f"{path} repeats test indices; refusing to pair")
            order = np.argsort(index, kind="stable")
            labels = np.asarray(run.per_sample["label"], dtype=np.int64)[order]
            if reference is None:
                reference = (path, index[order], labels)
            elif not np.array_equal(index[order], reference[1]):
                raise ValueError(
                    f"per-sample indices differ between {reference[0]} ({reference[1].size} clips) and {path} "
                    f"({index.size} clips), seed {seed}: the methods were not tested on the same clips; refusing to pair"
                )
            elif not np.array_equal(labels, reference[2]):
                raise ValueError(f"labels differ between {reference[0]} and {path} for the same indices, seed {seed}; refusing to pair")
            columns = {**run.per_sample["correct"],
                       **{f"{SOUND_PREFIX}{key}": v for key, v in run.per_sample.get("sound_certified", {}).items()}}
            for key, values in columns.items():
                correct[name].setdefault(key, []).append(np.asarray(values, dtype=float)[order])
        index_rows.append(reference[1])
    if len({row.size for row in index_rows}) != 1:
        counts = {seed: row.size for seed, row in zip(seeds, index_rows, strict=True)}
        raise ValueError(f"test clip counts differ between seeds {counts}; the bootstrap needs the same count for every seed")
    stacked = {
        name: {key: np.stack(rows) for key, rows in keys.items() if len(rows) == len(seeds)} for name, keys in correct.items()
    }
    return PairedOutcomes(seeds, np.stack(index_rows), stacked)


def summarize(values: Sequence[float | None]) -> dict | None:
    """``{"mean", "std", "per_seed"}`` of one number per seed (std with ddof=1); None if any value is missing."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    mean, std = seed_mean_std(values)
    return {"mean": mean, "std": std, "per_seed": [float(v) for v in values]}


def first_metrics(runs: Mapping[str, Sequence[SeedRun]]) -> RobustnessMetrics:
    """The metrics of the first run of the first method: whose modalities and threats lay out the tables."""
    return next(iter(runs.values()))[0].metrics


def accuracy_summary(runs: Mapping[str, Sequence[SeedRun]], threats: Sequence[Threat]) -> dict[str, dict[str, dict | None]]:
    """Per method and threat (keyed by its key; the columns of the paper's Table 2): accuracy mean,
    std and per-seed values; None where a run lacks the threat."""
    return {
        name: {threat.key: summarize([run.metrics.accuracy.get(threat) for run in seed_runs]) for threat in threats}
        for name, seed_runs in runs.items()
    }


def certificate_summary(
    runs: Mapping[str, Sequence[SeedRun]], certificate: Callable[[RobustnessMetrics], Certificate | None]
) -> dict[str, dict]:
    """Per method whose every run has a ``certificate`` (e.g. the common protocol's over the test
    samples, or CRMT's own training-set one): the Lipschitz sources and the mean radius per scope
    (keyed by its key: multi-modal and per modality) summarized over seeds."""
    summary = {}
    for name, seed_runs in runs.items():
        certificates = [certificate(run.metrics) for run in seed_runs]
        if any(c is None for c in certificates):
            continue
        scopes = list(certificates[0].radii)
        summary[name] = {
            "lipschitz": sorted({c.lipschitz for c in certificates}),
            **{scope.key: summarize([c.radii[scope].mean for c in certificates]) for scope in scopes},
        }
    return summary


SMOOTHED_RADII_OVER_SIGMA = (0.5, 1.0, 2.0)
"""Where the comparison reads the certified-accuracy curves, as multiples of the smoothing sigma."""


def smoothing_summary(runs: Mapping[str, Sequence[SeedRun]]) -> dict[str, dict]:
    """Per method whose every run has randomized-smoothing certificates, per scope (keyed by its key):
    the radii r = f x sigma (f in ``SMOOTHED_RADII_OVER_SIGMA``, sigma of the first run), the clips
    certified per run, the abstention rate and, at each r, the smoothed certified accuracy (sound,
    over the certified clips) and the estimated one (the common protocol's exact curve over every
    test clip; None where a run has none), each summarized over seeds."""
    summary = {}
    for name, seed_runs in runs.items():
        if any(run.metrics.smoothed is None for run in seed_runs):
            continue
        summary[name] = {}
        for scope, first in seed_runs[0].metrics.smoothed.items():
            radii = [factor * first.sigma for factor in SMOOTHED_RADII_OVER_SIGMA]
            smoothed = [run.metrics.smoothed[scope] for run in seed_runs]
            estimated = [run.metrics.certified.radii[scope].curve if run.metrics.certified else None for run in seed_runs]
            summary[name][scope.key] = {
                "radii": radii,
                "certified_clips": [certificate.certified for certificate in smoothed],
                "abstention_rate": summarize([certificate.abstention_rate for certificate in smoothed]),
                "smoothed": [summarize([certificate.curve.at(r) for certificate in smoothed]) for r in radii],
                "estimated": [summarize([curve.at(r) if curve else None for curve in estimated]) for r in radii],
            }
    return summary


def smoothed_outcomes(runs: Mapping[str, Sequence[SeedRun]]) -> tuple[float, PairedOutcomes] | None:
    """The radius r = ``SMOOTHING_JUDGED_AT`` x sigma and, per method whose every run holds per-sample
    smoothing certificates and per scope key, the (S, C) 0/1 outcomes "smoothed prediction correct
    with certified radius >= r" over the certified clips in dataset-index order (C: the clips each run
    certified). None when fewer than two methods have them. Raises ``ValueError`` (naming the files)
    when the methods ran for different seeds or used different sigmas, or two methods certified
    different clips for one seed."""
    smoothed = {name: seed_runs for name, seed_runs in runs.items()
                if all(run.metrics.smoothed and "smoothed" in run.per_sample for run in seed_runs)}
    if len(smoothed) < 2:
        return None
    seeds = common_seeds(smoothed)
    sigmas = {(name, run.seed): next(iter(run.metrics.smoothed.values())).sigma
              for name, seed_runs in smoothed.items() for run in seed_runs}
    if len(set(sigmas.values())) != 1:
        raise ValueError(f"smoothing sigma differs between runs {sigmas}; the orderings compare one radius")
    radius = SMOOTHING_JUDGED_AT * next(iter(sigmas.values()))
    rows: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in smoothed}
    reference: dict[tuple[int, str], tuple[Path, np.ndarray]] = {}
    for name, seed_runs in smoothed.items():
        for run in seed_runs:
            path = run.folder / "per_sample.json"
            labels = dict(zip(run.per_sample["index"], run.per_sample["label"], strict=True))
            for key, rows_of_scope in run.per_sample["smoothed"].items():
                index = np.asarray(rows_of_scope["index"], dtype=np.int64)
                order = np.argsort(index, kind="stable")
                first = reference.setdefault((run.seed, key), (path, index[order]))
                if not np.array_equal(first[1], index[order]):
                    raise ValueError(
                        f"smoothing certified different clips in {first[0]} and {path} ({key}, seed {run.seed}); "
                        "refusing to pair"
                    )
                label = np.asarray([labels[i] for i in index[order].tolist()])
                prediction = np.asarray(rows_of_scope["prediction"])[order]
                certified = np.asarray(rows_of_scope["radius"], dtype=float)[order] >= radius
                rows[name].setdefault(key, []).append(((prediction == label) & certified).astype(float))
    correct = {name: {key: np.stack(values) for key, values in keys.items()} for name, keys in rows.items()}
    some_key = next(iter(next(iter(correct.values()))))
    index = np.stack([reference[(seed, some_key)][1] for seed in seeds])
    return radius, PairedOutcomes(seeds, index, correct)


def smoothing_claims(runs: Mapping[str, Sequence[SeedRun]], replicates: int = 10_000, seed: int = 0) -> list[Claim]:
    """``SMOOTHING_ORDERINGS`` among the methods present, per smoothing scope, judged by the paired
    bootstrap (seeds and certified clips) on :func:`smoothed_outcomes`."""
    paired = smoothed_outcomes(runs)
    if paired is None:
        return []
    radius, outcomes = paired
    claims = []
    for a, b in SMOOTHING_ORDERINGS:
        if a not in outcomes.correct or b not in outcomes.correct:
            continue
        for key in outcomes.correct[a]:
            scope = _scope_label(key)
            comparison = judge(outcomes, a, b, [key], mean_accuracy,
                               f"smoothed certified accuracy at r = {radius:g} ({scope})", replicates=replicates, seed=seed)
            claims.append(Claim(f"{_label(a)} above {_label(b)}, smoothed certified accuracy, {scope}", (comparison,)))
    return claims


def sound_summary(runs: Mapping[str, Sequence[SeedRun]]) -> dict[str, dict]:
    """Per method whose every run has sound radii (1-Lipschitz encoders), per scope key: the budget and the sound
    certified accuracy at it and at half of it (mean, std, per seed), and the source of the constants."""
    summary = {}
    for name, seed_runs in runs.items():
        certificates = [run.metrics.certified_sound for run in seed_runs]
        if any(c is None for c in certificates):
            continue
        settings = seed_runs[0].metrics.settings
        scopes = {}
        for scope in certificates[0].radii:
            budget = settings.budget(scope)
            curves = [c.radii[scope].curve for c in certificates]
            scopes[scope.key] = {
                "budget": budget,
                "at_budget": summarize([curve.at(budget) for curve in curves]),
                "at_half_budget": summarize([curve.at(budget / 2) for curve in curves]),
                "mean_radius": summarize([c.radii[scope].mean for c in certificates]),
            }
        summary[name] = {"lipschitz": sorted({c.lipschitz for c in certificates}), "scopes": scopes}
    return summary


def sound_table(summary: Mapping[str, Mapping]) -> str:
    """One row per method and scope: the budget, sound certified accuracy at it and at half of it, mean radius."""
    header = ["method", "scope", "budget", "sound certified acc. at the budget", "at half the budget", "mean radius"]
    rows = [[name, _scope_label(key), f"{scope['budget']:g}", mean_std_cell(scope["at_budget"]),
             mean_std_cell(scope["at_half_budget"]), mean_std_cell(scope["mean_radius"])]
            for name, method in summary.items() for key, scope in method["scopes"].items()]
    return markdown_table(header, rows)


def sound_claims(outcomes: PairedOutcomes, replicates: int = 10_000, seed: int = 0) -> list[Claim]:
    """``CRMT_PAIRS`` among the methods with sound radii (each CRMT variant above the method it extends), per scope,
    at the budget and at half of it, judged by the paired bootstrap on the per-clip outcomes "sound radius >= r"; a
    radius at which neither method certifies any clip is not judged."""
    claims = []
    for a, b in CRMT_PAIRS:
        if a not in outcomes.correct or b not in outcomes.correct:
            continue
        keys = [key for key in outcomes.correct[a] if key.startswith(SOUND_PREFIX) and key in outcomes.correct[b]]
        for key in keys:
            if not (outcomes.correct[a][key].any() or outcomes.correct[b][key].any()):
                continue  # neither certifies any clip: nothing to judge (the summary table shows the zeros)
            scope_key = key.removeprefix(SOUND_PREFIX)
            where = "half the budget" if scope_key.endswith("_half") else "the budget"
            scope = _scope_label(scope_key.removesuffix("_half"))
            text = f"sound certified accuracy at {where} ({scope})"
            comparison = judge(outcomes, a, b, [key], mean_accuracy, text, replicates=replicates, seed=seed)
            claims.append(Claim(f"{_label(a)} above {_label(b)}, {text}", (comparison,)))
    return claims


def _scope_label(key: str) -> str:
    """How the comparison names a smoothing scope: ``joint`` (noise on every modality) or ``<m> only``."""
    return "joint" if key == MULTIMODAL_KEY else f"{key} only"


def smoothing_table(summary: Mapping[str, Mapping[str, Mapping]]) -> str:
    """One row per method and scope: certified clips, abstention rate, smoothed and estimated certified
    accuracy at each radius ("mean ± std" over seeds)."""
    first = next(iter(next(iter(summary.values())).values()))
    radii = [f"{r:g}" for r in first["radii"]]
    header = ["method", "scope (noised)", "clips", "abstention rate", *(f"smoothed r = {r}" for r in radii),
              *(f"estimated r = {r}" for r in radii)]
    rows = [
        [name, _scope_label(key), "/".join(map(str, cells["certified_clips"])),
         mean_std_cell(cells["abstention_rate"]), *map(mean_std_cell, cells["smoothed"]), *map(mean_std_cell, cells["estimated"])]
        for name, scopes in summary.items()
        for key, cells in scopes.items()
    ]
    return markdown_table(header, rows)


def mean_std_cell(summary: Mapping | None) -> str:
    """A table cell "mean ± std" with 3 decimals, "-" when missing."""
    return "-" if summary is None else f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def accuracy_table(summary: Mapping[str, Mapping[str, dict | None]], threats: Sequence[Threat]) -> str:
    """Accuracy "mean ± std" over seeds, one row per method, a column per threat (the paper's Table 2)."""
    rows = [[name, *(mean_std_cell(cells.get(threat.key)) for threat in threats)] for name, cells in summary.items()]
    return markdown_table(["method", *(threat.title for threat in threats)], rows)


def certificate_table(summary: Mapping[str, Mapping], modalities: Sequence[str]) -> str:
    """Mean certified radius "mean ± std" over seeds (multi-modal and per modality) and the Lipschitz source."""
    header = ["method", "mean radius", *(f"mean radius {m}" for m in modalities), "Lipschitz constants"]
    scopes = Scope.every(modalities)
    rows = [
        [name, *(mean_std_cell(cells.get(scope.key)) for scope in scopes), "; ".join(cells["lipschitz"])]
        for name, cells in summary.items()
    ]
    return markdown_table(header, rows)


@dataclass(frozen=True)
class Comparison:
    """One judged pair: statistic(a) - statistic(b) by the paired bootstrap, and its verdict for the
    claim a > b (``higher_is_better``) or a < b."""

    a: str
    b: str
    statistic: str
    higher_is_better: bool
    value_a: float
    value_b: float
    bootstrap: BootstrapResult
    verdict: Verdict

    @property
    def detectable(self) -> float:
        """The difference detectable at 80% power, (z_0.975 + z_0.80) x the bootstrap SE
        (:func:`crmt.statistics.minimum_detectable_difference`)."""
        return minimum_detectable_difference(self.bootstrap.standard_error)

    @property
    def underpowered(self) -> bool:
        """Within noise, and the observed difference smaller than the detectable one."""
        return self.verdict == "within noise" and abs(self.bootstrap.observed) < self.detectable

    def as_dict(self) -> dict:
        result = asdict(self)
        result["bootstrap"]["interval"] = list(self.bootstrap.interval)
        result["detectable_at_80_power"] = self.detectable
        result["underpowered"] = self.underpowered
        return result


@dataclass(frozen=True)
class Claim:
    """One of the paper's orderings: its comparisons (one, or one per rival) and the overall verdict.
    ``protocol``: ``adaptive`` (judged on the adaptive worst case, or on a threat without attack: clean, a
    missing modality; these carry the claims) or ``paper`` (judged on the paper's FGM or PGD, for reference)."""

    text: str
    comparisons: tuple[Comparison, ...]
    protocol: str = "adaptive"

    @property
    def verdict(self) -> Verdict:
        return overall_verdict([c.verdict for c in self.comparisons])

    def as_dict(self) -> dict:
        return {"claim": self.text, "verdict": self.verdict, "protocol": self.protocol,
                "comparisons": [c.as_dict() for c in self.comparisons]}


def judge(
    outcomes: PairedOutcomes,
    a: str,
    b: str,
    keys: Sequence[str],
    statistic: Statistic,
    name: str,
    higher_is_better: bool = True,
    replicates: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Bootstrap statistic(a) - statistic(b) over the outcome columns ``keys`` (one key: the
    statistic gets that (S, C) array; several: a dict of them) and judge it."""

    def columns(method: str):
        missing = [key for key in keys if key not in outcomes.correct[method]]
        if missing:
            raise KeyError(f"per-sample outcomes of {method} lack {missing}")
        return outcomes.correct[method][keys[0]] if len(keys) == 1 else {k: outcomes.correct[method][k] for k in keys}

    first, second = columns(a), columns(b)
    result = paired_bootstrap(first, second, statistic, replicates=replicates, seed=seed)
    return Comparison(
        a, b, name, higher_is_better, float(statistic(first)), float(statistic(second)), result,
        verdict(result.interval, higher_is_better),
    )


def _label(name: str) -> str:
    return LABELS.get(name, name)


PAPER_KINDS = ("fgm", "pgd")
"""The paper's attack protocol; orderings judged on them are listed for reference."""


def claim_subject(threat: Threat) -> str:
    """How an ordering names a threat: ``clean``, ``FGM``, ``PGD-l2``, ``Adaptive``, ``uni-modal PGD-l2 on <m>``,
    ``uni-modal Adaptive on <m>``, ``<m> missing``."""
    if threat.kind == "clean":
        return "clean"
    if threat.kind == "missing":
        return f"{threat.attacked[0]} missing"
    return threat.title if threat.scope.multimodal else f"uni-modal {KIND_TITLES[threat.kind]} on {threat.attacked[0]}"


def claim_protocol(threat: Threat) -> str:
    """``paper`` for the paper's FGM and PGD, ``adaptive`` otherwise (see :class:`Claim`)."""
    return "paper" if threat.kind in PAPER_KINDS else "adaptive"


def paper_claims(outcomes: PairedOutcomes, threats: Sequence[Threat], replicates: int = 10_000, seed: int = 0) -> list[Claim]:
    """The paper's orderings among the methods present, over the ``threats`` evaluated (Table-2
    order), each judged by the paired bootstrap:

    - each CRMT variant above the method of its pair in ``CRMT_PAIRS`` (CRMT-JT and CRMT-AT above JT,
      CRMT-AT above MMAT, CRMT-Mix above Mixup, CRMT-MMT above MMT) in clean, FGM, PGD and adaptive accuracy,
      and under uni-modal PGD and adaptive attacks and with a modality missing, for each modality (the paper's
      Tables 1-3);
    - CRMT-AT best under FGM, PGD and the adaptive attack: against every other method, holding only if it
      holds against all;
    - with two modalities, the gap |acc(<kind>_<m0>) - acc(<kind>_<m1>)| between the two uni-modal attacks
      (PGD, and adaptive) smaller for each CRMT variant than for the method of its pair.

    Orderings on the paper's FGM and PGD have ``protocol`` ``paper``; the others ``adaptive`` (see :class:`Claim`).
    """
    present = list(outcomes.correct)
    options = {"replicates": replicates, "seed": seed}
    claims = []
    multimodal = [t for t in threats if t.kind in ("fgm", "pgd", "adaptive") and t.scope.multimodal]
    unimodal = [t for t in threats if t.kind in ("pgd", "adaptive") and not t.scope.multimodal]
    judged = [t for t in threats if t.kind in ("clean", "missing") or t in multimodal or t in unimodal]
    pairs = [(a, b) for a, b in CRMT_PAIRS if a in present and b in present]
    for a, b in pairs:
        for threat in judged:
            comparison = judge(outcomes, a, b, [threat.key], mean_accuracy, f"accuracy {threat.key}", **options)
            claims.append(Claim(f"{_label(a)} above {_label(b)}, {claim_subject(threat)}", (comparison,), claim_protocol(threat)))
    rivals = [name for name in present if name != "crmt_at"]
    if "crmt_at" in present and rivals:
        for threat in multimodal:
            comparisons = tuple(
                judge(outcomes, "crmt_at", rival, [threat.key], mean_accuracy, f"accuracy {threat.key}", **options)
                for rival in rivals
            )
            claims.append(Claim(f"CRMT-AT best under {threat.title}", comparisons, claim_protocol(threat)))
    for kind in ("pgd", "adaptive"):
        pair = [t for t in unimodal if t.kind == kind]
        if len(pair) != 2:
            continue
        first, second = pair
        keys = [first.key, second.key]
        gap = absolute_gap(*keys)
        for a, b in pairs:
            comparison = judge(outcomes, a, b, keys, gap, gap.__name__, higher_is_better=False, **options)
            claims.append(Claim(
                f"gap between uni-modal {KIND_TITLES[kind]} on {first.attacked[0]} and on {second.attacked[0]} "
                f"smaller for {_label(a)} than {_label(b)}",
                (comparison,), claim_protocol(first),
            ))
    return claims


def _signed(value: float) -> str:
    return f"{value:+.3f}"


ORDERING_HEADER = ("ordering", "verdict", "difference", "95% interval", "SE", f"detectable at {POWER:.0%} power", "statistic")
"""The columns of the orderings' tables in ``compare.md``."""


def verdict_cell(comparison: Comparison) -> str:
    """The verdict, ``within noise (underpowered)`` when the difference is below the detectable one."""
    return f"{comparison.verdict} (underpowered)" if comparison.underpowered else comparison.verdict


def comparison_cells(comparison: Comparison) -> list[str]:
    """verdict, difference, interval, SE, detectable difference, statistic (A value vs B value)."""
    result = comparison.bootstrap
    low, high = result.interval
    return [
        verdict_cell(comparison), _signed(result.observed), f"[{_signed(low)}, {_signed(high)}]",
        f"{result.standard_error:.3f}", f"{comparison.detectable:.3f}",
        f"{comparison.statistic}: {comparison.a} {comparison.value_a:.3f} vs {comparison.b} {comparison.value_b:.3f}",
    ]


PREFERRED_MODALITY = "audio"
"""The modality models prefer in the paper's setting (audio on Kinetics-Sounds; the embedded default is built with
audio the stronger modality, docs/datasets.md)."""


def preference_claims(
    outcomes: PairedOutcomes, threats: Sequence[Threat], preferred: str = PREFERRED_MODALITY,
    replicates: int = 10_000, seed: int = 0,
) -> list[Claim]:
    """The paper's modality-preference phenomenon (its Figure 1 and Table 2) within each method: the uni-modal PGD
    and adaptive attacks on the ``preferred`` modality are the more effective ones (accuracy under the attack on
    the other modality minus accuracy under the attack on the preferred one, > 0), and losing the preferred
    modality costs more (accuracy with the other one missing minus with the preferred one missing, > 0); each
    judged by the paired bootstrap over seeds and clips. JT is expected to show it; CRMT to narrow it (the gap
    orderings of :func:`paper_claims`). None without the preferred modality among two."""
    options = {"replicates": replicates, "seed": seed}
    claims = []
    for method in outcomes.correct:
        for kind in ("pgd", "adaptive", "missing"):
            pair = [t for t in threats if t.kind == kind and len(t.attacked) == 1]
            attacked = [t.attacked[0] for t in pair]
            if len(pair) != 2 or preferred not in attacked:
                continue
            on_preferred, on_other = (pair[0], pair[1]) if attacked[0] == preferred else (pair[1], pair[0])
            other = on_other.attacked[0]
            first = outcomes.correct[method][on_other.key]
            second = outcomes.correct[method][on_preferred.key]
            result = paired_bootstrap(first, second, mean_accuracy, **options)
            comparison = Comparison(
                f"{method}: {on_other.key}", f"{method}: {on_preferred.key}", "accuracy", True,
                float(mean_accuracy(first)), float(mean_accuracy(second)), result, verdict(result.interval),
            )
            subject = (f"losing {preferred} costs more than losing {other}" if kind == "missing" else
                       f"uni-modal {KIND_TITLES[kind]} on {preferred} more effective than on {other}")
            claims.append(Claim(f"{_label(method)}: {subject}", (comparison,), "paper" if kind in PAPER_KINDS else "adaptive"))
    return claims


def _eta_pair(metrics: RobustnessMetrics) -> tuple[str, str] | None:
    return (metrics.eta_ratio.numerator, metrics.eta_ratio.denominator) if metrics.eta_ratio else None


def eta_summary(runs: Mapping[str, Sequence[SeedRun]]) -> dict[str, dict | None]:
    """Per method, the mean log eta ratio of each seed (the pair of the first run's ``eta_ratio``; Figure 3):
    ``{"mean", "std", "per_seed"}``, or None for a method without radii."""
    return {
        name: summarize([run.metrics.eta_ratio.mean_log_ratio if run.metrics.eta_ratio else None for run in seed_runs])
        for name, seed_runs in runs.items()
    }


def claim_rows(claim: Claim) -> list[list[str]]:
    """Table rows of one claim: one row, or an overall row and one row per rival."""
    if len(claim.comparisons) == 1:
        return [[claim.text, *comparison_cells(claim.comparisons[0])]]
    rows = [[claim.text, f"{claim.verdict} (over {len(claim.comparisons)} rivals)", *["-"] * (len(ORDERING_HEADER) - 2)]]
    return rows + [[f"{claim.text}, against {c.b}", *comparison_cells(c)] for c in claim.comparisons]


def claims_table(claims: Sequence[Claim]) -> str:
    """The orderings as a Markdown table (:data:`ORDERING_HEADER`; a ``|`` in a cell, as in the gap
    statistic's name, escaped)."""
    rows = [[cell.replace("|", "\\|") for cell in row] for claim in claims for row in claim_rows(claim)]
    return markdown_table(list(ORDERING_HEADER), rows)


def adaptive_summary(runs: Mapping[str, Sequence[SeedRun]]) -> dict[str, dict]:
    """Per method whose runs have the adaptive evaluation: the suites used, and per seed the raised sanity
    checks (their keys) and the radius audit's violation rate under l2-PGD and under the suite."""
    summary = {}
    for name, seed_runs in runs.items():
        adaptive = [run.metrics.adaptive for run in seed_runs]
        if any(a is None for a in adaptive):
            continue
        audits = [run.metrics.audit for run in seed_runs]
        summary[name] = {
            "suites": sorted({a.suite for a in adaptive}),
            "flags": {str(run.seed): [check.key for check in a.raised] for run, a in zip(seed_runs, adaptive, strict=True)},
            "audit_violation_rate": summarize([audit.violation_rate if audit else None for audit in audits]),
            "audit_adaptive_violation_rate": summarize([audit.adaptive_violation_rate if audit else None for audit in audits]),
        }
    return summary


def flag_table(summary: Mapping[str, Mapping]) -> str:
    """One row per method: the suite, the raised sanity checks per seed, the audit's violation rates."""
    rows = []
    for name, cells in summary.items():
        flags = "; ".join(f"seed {seed}: {', '.join(keys) if keys else 'none'}" for seed, keys in cells["flags"].items())
        rows.append([name, ", ".join(cells["suites"]), flags, mean_std_cell(cells["audit_violation_rate"]),
                     mean_std_cell(cells["audit_adaptive_violation_rate"])])
    return markdown_table(["method", "suite", "raised sanity checks", "audit violation rate, l2-PGD",
                           "audit violation rate, adaptive"], rows)


def averaged_curves(runs: Mapping[str, Sequence[SeedRun]]) -> tuple[list[float], dict[str, list[float]]]:
    """The radii and, per method of the ablation present, its multi-modal accuracy-vs-radius curve averaged over seeds."""
    curves, radii = {}, None
    for name in ABLATION:
        if name not in runs:
            continue
        seed_curves = [run.metrics.curves for run in runs[name]]
        for curve in seed_curves:
            if radii is None:
                radii = list(curve.radii)
            elif list(curve.radii) != radii:
                raise ValueError(f"{name}: curve radii {curve.radii} differ from {radii}")
        curves[name] = np.mean([c.multimodal for c in seed_curves], axis=0).tolist()
    return radii or [], curves


def wall_time_lines(runs: Mapping[str, Sequence[SeedRun]], elapsed: float | None) -> list[str]:
    """Markdown bullets: each run's recorded wall time, their total, and this invocation's time."""
    lines, total, count = [], 0.0, 0
    for name, seed_runs in runs.items():
        parts = []
        for run in seed_runs:
            parts.append(f"seed {run.seed} {run.wall_seconds:.0f} s" if run.wall_seconds is not None else f"seed {run.seed} -")
            if run.wall_seconds is not None:
                total, count = total + run.wall_seconds, count + 1
        lines.append(f"- {name}: " + ", ".join(parts))
    lines.append(f"- total: {total:.0f} s over {count} recorded runs")
    if elapsed is not None:
        lines.append(f"- this invocation (runs reused or trained, plus statistics): {elapsed:.0f} s")
    return lines


POWER_DESCRIPTION = (
    "Per headline ordering, the difference detectable at 80% power with S seeds at these N clips, projected "
    "from the variance components of these runs (seed tau2, clip kappa2, residual sigma2 of the paired "
    "per-clip difference: the mean difference varies as tau2/S + kappa2/N + sigma2/(S N), the bootstrap's "
    "interval as its expectation under that model), and the smallest S at which the observed difference "
    "would be detected with 80% probability if it were the true one (`python -m crmt.power <this folder> "
    "--check` gives the components, the intervals and a check by subsampling seeds; see crmt.power)."
)


def power_summary(outcomes: PairedOutcomes, runs: Mapping[str, Sequence[SeedRun]],
                  seeds: Sequence[int] = PROJECTED_SEEDS) -> dict:
    """``compare.json``'s ``power``: the projection of :func:`crmt.power.headline_power` for the headline
    orderings present, the model, and the recorded run time of one seed of every method compared (None if
    not recorded). At the seeds run the projected detectable difference is close to, not equal to, the
    orderings' (it is an expectation under the model, and it counts the seed variance fully)."""
    powers = headline_power(outcomes, seeds)
    return {
        "model": POWER_DESCRIPTION, "seeds": list(seeds), "clips": outcomes.clips,
        "orderings": [power.as_dict() for power in powers], "cost_per_seed_seconds": cost_per_seed(runs),
        "cost_methods": list(runs),
    }


def power_lines(power: Mapping) -> list[str]:
    """``compare.md``'s closing section from :func:`power_summary`: the description, one table, the cost."""
    if not power["orderings"]:
        return [("No headline ordering (CRMT-JT or CRMT-AT against JT) with at least 2 seeds: one seed cannot "
                 "tell the seed-to-seed variance, so no projection.")]
    powers = [OrderingPower.from_dict(document) for document in power["orderings"]]
    seeds = powers[0].components.seeds
    lines = [power["model"], "", projection_table(powers), ""]
    lines.append(f"Estimated from S = {seeds} seed(s): the seed variance rests on {seeds - 1} degree(s) of freedom, "
                 "so read these as a rough guide.")
    if power["cost_per_seed_seconds"]:
        lines[-1] += (f" One more seed of the {len(power['cost_methods'])} methods compared costs about "
                      f"{power['cost_per_seed_seconds']:.0f} s of run time (the mean recorded per run, summed).")
    return lines


def comparison_results(
    runs: Mapping[str, Sequence[SeedRun]], data: str | None = None, replicates: int = 10_000, seed: int = 0
) -> tuple[dict, list[Claim], list[Claim], list[Claim]]:
    """Every number of the comparison (the content of ``compare.json``: seeds, clip count, accuracy
    and radii summaries (mean, std, per seed), the judged claims, the wall times), the paper's
    orderings, the orderings under smoothing and those on sound certified accuracy."""
    first = first_metrics(runs)
    outcomes = pair_outcomes(runs)
    claims = paper_claims(outcomes, first.threats, replicates, seed)
    claims += preference_claims(outcomes, first.threats, replicates=replicates, seed=seed)
    smoothing = smoothing_claims(runs, replicates, seed)
    sound = sound_claims(outcomes, replicates, seed)
    return {
        "experiments": list(runs),
        "data": data,
        "seeds": outcomes.seeds,
        "test_clips": outcomes.clips,
        "modalities": list(first.modalities),
        "threats": [threat.to_json() for threat in first.threats],
        "bootstrap": {"replicates": replicates, "confidence": 0.95, "generator_seed": seed, "test": TEST_DESCRIPTION,
                      "detectable": DETECTABLE_DESCRIPTION, "power": POWER},
        "accuracy": accuracy_summary(runs, first.threats),
        "certified": certificate_summary(runs, lambda metrics: metrics.certified),
        "certified_model": certificate_summary(runs, lambda metrics: metrics.certified_model),
        "eta_log_ratio": {"pair": _eta_pair(first), "methods": eta_summary(runs)},
        "smoothed": smoothing_summary(runs),
        "adaptive": adaptive_summary(runs),
        "claims": [claim.as_dict() for claim in claims],
        "smoothing_claims": [claim.as_dict() for claim in smoothing],
        "sound": sound_summary(runs),
        "sound_claims": [claim.as_dict() for claim in sound],
        "power": power_summary(outcomes, runs),
        "wall_seconds": {name: {str(run.seed): run.wall_seconds for run in seed_runs} for name, seed_runs in runs.items()},
        "total_wall_seconds": sum(run.wall_seconds or 0.0 for seed_runs in runs.values() for run in seed_runs),
    }, claims, smoothing, sound


def render_markdown(results: Mapping, claims: Sequence[Claim], smoothing: Sequence[Claim], ablation: Path | None,
                    elapsed: float | None, runs: Mapping[str, Sequence[SeedRun]], sound: Sequence[Claim] = ()) -> str:
    """``compare.md`` from :func:`comparison_results`; the tables' columns are the first run's threats and modalities."""
    first = first_metrics(runs)
    modalities = first.modalities
    seeds = results["seeds"]
    data = f"experiments/data/{results['data']}.yaml" if results["data"] else "as in each experiment's config"
    parts = [
        "# Comparison of training strategies",
        "",
        f"Data: {data}. S = {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) per "
        f"method, each training and testing once; C = {results['test_clips']} test clips per seed. Cells: mean ± "
        "sample std (ddof 1) over seeds. FGM and PGD-l2: the paper's attack protocol, upper bounds that a stronger "
        "attack lowers; Adaptive: the worst case per clip over the adaptive suite and the paper's attacks on the "
        "same budget (see each `<name>/seed<s>/report.md`).",
        "",
        "## Accuracy (Tables 1 and 2 layout)",
        "",
        accuracy_table(results["accuracy"], first.threats),
        "",
        "## Certified radii",
        "",
        "Common protocol: every certifiable method's Lipschitz estimate over its evaluated test samples.",
        "",
        certificate_table(results["certified"], modalities) if results["certified"] else "No method has certified radii.",
    ]
    eta = results["eta_log_ratio"]
    if eta["pair"] and any(eta["methods"].values()):
        numerator, denominator = eta["pair"]
        parts += [
            "",
            f"Vulnerability indicator ratio (Figure 3): the mean natural log of eta^({numerator}) / eta^({denominator}) "
            f"over the class pairs (< 0: {denominator} the more vulnerable modality; 0: balanced), mean ± std over seeds:",
            "",
            "| method | log eta ratio | per seed |",
            "| --- | ---: | --- |",
            *(f"| {name} | {mean_std_cell(summary)} | {', '.join(f'{v:+.3f}' for v in summary['per_seed'])} |"
              for name, summary in eta["methods"].items() if summary),
        ]
    if results["certified_model"]:
        sources = sorted({source for method in results["certified_model"].values() for source in method["lipschitz"]})
        parts += [
            "",
            f"CRMT's own certificate (its tau from training: {'; '.join(sources)}); not comparable across methods:",
            "",
            certificate_table(results["certified_model"], modalities),
        ]
    if results["smoothed"]:
        parts += [
            "",
            "## Randomized smoothing (sound certificates)",
            "",
            "Certified accuracy of the smoothed classifier (Cohen et al.'s CERTIFY; abstentions count as wrong) "
            "over the clips each run certified (spread evenly over the test split), beside the estimated certified "
            "accuracy of the model itself (common protocol, every test clip) at the same radii. See each run's "
            "`report.md` for sigma, n and R_max.",
            "",
            smoothing_table(results["smoothed"]),
        ]
        if smoothing:
            parts += [
                "",
                "Orderings under smoothing, each judged by the paired bootstrap below, over seeds and the certified "
                "clips (the same clips for every method):",
                "",
                claims_table(smoothing),
            ]
    if results["sound"]:
        parts += [
            "",
            "## Sound certified accuracy (1-Lipschitz encoders)",
            "",
            "Certified accuracy from radii that hold for every perturbation (the encoders' Lipschitz bounds times "
            "the head's exact row differences, float32 with a rounding margin; see each run's `report.md`), at each "
            "scope's table budget and at half of it, every test clip:",
            "",
            sound_table(results["sound"]),
        ]
        if sound:
            parts += ["", "Orderings on sound certified accuracy, judged by the paired bootstrap below:", "",
                      claims_table(sound)]
        else:
            parts += ["", "No ordering on sound certified accuracy is judged: at these radii neither method of a pair "
                          "certifies any clip."]
    if results["adaptive"]:
        parts += [
            "",
            "## Adaptive evaluation: sanity checks and audit",
            "",
            "A raised check means that run's adaptive accuracies may overstate its robustness (each run's "
            "`report.md` lists every check with its counts).",
            "",
            flag_table(results["adaptive"]),
        ]
    bootstrap = results["bootstrap"]
    parts += [
        "",
        "## Paper orderings",
        "",
        f"{bootstrap['test']} B = {bootstrap['replicates']} replicates, generator seed {bootstrap['generator_seed']}.",
        "",
        bootstrap["detectable"],
        "",
    ]
    judged = [claim for claim in claims if claim.protocol == "adaptive"]
    reference = [claim for claim in claims if claim.protocol == "paper"]
    if not claims:
        parts += ["No ordering of the paper applies to the methods compared."]
    else:
        attacked = any("Adaptive" in claim.text for claim in judged)
        parts += [
            "### Judged on the adaptive evaluation (and on clean and missing-modality accuracy)",
            "",
            claims_table(judged),
        ]
        if not attacked:
            parts += ["", "These runs have no adaptive evaluation: every attack ordering rests on the paper's weak "
                          "protocol below alone."]
        parts += [
            "",
            "### The same orderings under the paper's attack protocol (FGM, PGD-l2), for reference",
            "",
            claims_table(reference),
        ]
    if ablation is not None:
        parts += ["", f"Ablation figure (the paper's Figure 5 under its l2-PGD protocol, curves averaged over seeds): `{ablation}`"]
    parts += ["", "## Wall time (train + test + report)", "", *wall_time_lines(runs, elapsed)]
    parts += ["", "## Seeds needed", "", *power_lines(results["power"])]
    return "\n".join(parts) + "\n"


def write_comparison(
    runs: Mapping[str, Sequence[SeedRun]],
    out: Path,
    data: str | None = None,
    replicates: int = 10_000,
    seed: int = 0,
    elapsed: float | None = None,
) -> tuple[Path, Path]:
    """Write ``compare.md``, ``compare.json`` and (when ablation models are present) ``ablation.png``
    into ``out``; return the paths of the first two."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, claims, smoothing, sound = comparison_results(runs, data, replicates, seed)
    radii, curves = averaged_curves(runs)
    ablation = None
    if curves:
        ablation = plot_accuracy_vs_radius(
            radii, curves, out / "ablation.png",
            "ablation: accuracy under multi-modal l2-PGD, the paper's protocol (mean over seeds)"
        )
    results["elapsed_seconds"] = elapsed
    json_path = out / "compare.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown_path = out / "compare.md"
    markdown_path.write_text(render_markdown(results, claims, smoothing, ablation, elapsed, runs, sound), encoding="utf-8")
    return markdown_path, json_path
