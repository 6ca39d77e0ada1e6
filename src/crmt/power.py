"""How many seeds a comparison needs: the power of the paired two-level bootstrap of
:mod:`crmt.statistics`, projected from finished runs to other numbers of seeds (and clips).

``python -m crmt.power runs/compare/<DATA> [--experiments jt crmt_jt crmt_at] [--seeds 3 5 8 12] [--clips N] [--check]``
prints, for the
headline orderings (CRMT-JT above JT and CRMT-AT above JT: clean, under the paper's joint PGD and under
the adaptive evaluation's joint worst case), the projected 95% half-width and the minimum detectable
difference at each number of seeds, and the smallest number of seeds at which the observed difference
would exceed it; ``--check`` tests the projection against the runs themselves by subsampling seeds.

**The model.** The paired per-(seed, clip) difference of one ordering, d_ij = A_ij - B_ij (0/1 outcomes,
so d in {-1, 0, 1}), on S seeds and the same N test clips for every seed, is modelled as a crossed
random-effects design::

    d_ij = mu + a_i + b_j + e_ij,   Var a = tau2 (seed), Var b = kappa2 (clip), Var e = sigma2 (residual)

tau2: how much the difference moves from one training seed to another; kappa2: how much it moves from
one test clip to another consistently over seeds (a clip that one method gets right and the other wrong
whatever the seed); sigma2: the rest (the seed x clip interaction and the outcomes' own noise). The
three are estimated from the runs by the two-way ANOVA method of moments (:func:`variance_components`):
with MS_seed, MS_clip and MS_res the mean squares of the seed means, the clip means and the residuals,
sigma2 = MS_res, tau2 = (MS_seed - MS_res) / N, kappa2 = (MS_clip - MS_res) / S (negative estimates
set to 0). With the clips drawn afresh for every seed kappa2 is 0 and the model is the familiar
var = var_seed / S + var_clip / (S N), var_clip = sigma2; with one test set shared by every seed (the
embedded data's design) the clip effect does not average out over seeds and sets a floor that only
more clips lower.

Under this model the observed mean difference has the sampling variance (:func:`sampling_variance`)::

    V(S, N) = tau2 / S + kappa2 / N + sigma2 / (S N)

and the two-level bootstrap's variance on such data is, in expectation (:func:`bootstrap_variance`;
the bootstrap's exact variance on one data set is :func:`exact_bootstrap_variance`)::

    E V_boot(S, N) = tau2 (S - 1) / S^2 + kappa2 (N - 1) / N^2 + sigma2 (3 S N - 2 S - 2 N + 1) / (S^2 N^2)

(it resamples the residual at both levels, so it overstates the sigma2 part about threefold, and
with few seeds it understates the seed part by the factor (S - 1) / S). The verdicts of
``compare.md`` come from the bootstrap: "holds" when the observed difference exceeds z_0.975 x
SE_boot. So the projected 95% half-width at S seeds is z_0.975 sqrt(E V_boot(S, N)), and the
difference detectable at 80% power, the smallest true difference that makes the verdict settle with
probability 80% when the observed difference is normal around it with the model's SE, is::

    MDE(S) = z_0.975 sqrt(E V_boot(S, N)) + z_0.80 sqrt(V(S, N))

which is the (z_0.975 + z_0.80) x SE = 2.80 SE of ``compare.md`` (and of
:func:`crmt.statistics.minimum_detectable_difference`) when the two SEs agree: where the seed
variance dominates and there are more than a few seeds (within 10% from about 5 seeds on the
embedded runs). With 2-3 seeds the bootstrap understates the seed variance, and the projection does
not count on it; where the residual dominates the bootstrap's interval is wider than needed, and the
projection counts that too. "Seeds needed" is the smallest S whose MDE(S) is at most the observed
difference: it assumes the true difference is the one observed (an optimistic guess: the
observed differences that look large are partly luck). The components come from 2-3 seeds, so
tau2 rests on 1-2 degrees of freedom; the CLI also states the seeds needed with tau2 at its 80%
upper confidence bound (:func:`seed_variance_upper`).
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import chi2, norm

from crmt.statistics import POWER, SIGNIFICANCE, minimum_detectable_difference, paired_bootstrap, z_score

if TYPE_CHECKING:
    from crmt.compare_report import PairedOutcomes, SeedRun

HEADLINE_PAIRS = (("crmt_jt", "jt"), ("crmt_at", "jt"))
"""The headline orderings' pairs (a above b)."""
HEADLINE_KEYS = ("clean", "pgd", "adaptive")
"""The outcomes they are judged on: clean, the paper's joint l2-PGD, the adaptive joint worst case."""
PROJECTED_SEEDS = (3, 5, 8, 12, 20)
"""The numbers of seeds ``compare.md``'s projection shows."""
MAX_SEEDS = 200
"""How far :func:`seeds_needed` searches."""


@dataclass(frozen=True)
class VarianceComponents:
    """The variance components of a paired difference (see the module's model), estimated on
    ``seeds`` x ``clips`` outcomes whose mean difference is ``mean``; ``seed_mean_square`` is
    MS_seed (N tau2 + sigma2 in expectation, on seeds - 1 degrees of freedom)."""

    seed: float
    clip: float
    residual: float
    mean: float
    seeds: int
    clips: int
    seed_mean_square: float = math.nan


def _two_way(d: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Grand mean, seed (row) effects, clip (column) effects and residuals of an (S, N) array."""
    grand = float(d.mean())
    rows = d.mean(axis=1) - grand
    columns = d.mean(axis=0) - grand
    return grand, rows, columns, d - grand - rows[:, None] - columns[None, :]


def _differences(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=float)
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"need a non-empty (seeds, clips) array of paired differences, got shape {d.shape}")
    return d


def variance_components(d: np.ndarray) -> VarianceComponents:
    """Method-of-moments estimates (two-way ANOVA, truncated at 0) of tau2, kappa2 and sigma2 from the
    (S, N) paired differences ``d`` (A - B per seed and clip); ``ValueError`` with fewer than 2 seeds
    or 2 clips (one seed cannot tell the seed variance from the clips')."""
    d = _differences(d)
    seeds, clips = d.shape
    if seeds < 2 or clips < 2:
        raise ValueError(f"the variance components need at least 2 seeds and 2 clips, got {seeds} x {clips}")
    grand, rows, columns, residual = _two_way(d)
    ms_seed = clips * float((rows**2).sum()) / (seeds - 1)
    ms_clip = seeds * float((columns**2).sum()) / (clips - 1)
    ms_residual = float((residual**2).sum()) / ((seeds - 1) * (clips - 1))
    return VarianceComponents(
        seed=max(0.0, (ms_seed - ms_residual) / clips), clip=max(0.0, (ms_clip - ms_residual) / seeds),
        residual=ms_residual, mean=grand, seeds=seeds, clips=clips, seed_mean_square=ms_seed,
    )


def seed_variance_upper(components: VarianceComponents, confidence: float = 0.8) -> VarianceComponents:
    """The components with tau2 at its one-sided ``confidence`` upper bound: MS_seed (S - 1) /
    chi2_{1 - confidence}(S - 1) in place of MS_seed (sigma2 taken as known, it rests on
    (S - 1)(N - 1) degrees of freedom). With 3 seeds the 80% bound multiplies MS_seed by 4.5."""
    df = components.seeds - 1
    upper = components.seed_mean_square * df / float(chi2.ppf(1 - confidence, df))
    return replace(components, seed=max(0.0, (upper - components.residual) / components.clips), seed_mean_square=upper)


def sampling_variance(components: VarianceComponents, seeds: int, clips: int | None = None) -> float:
    """V(S, N) = tau2 / S + kappa2 / N + sigma2 / (S N): the variance of the mean difference over new
    seeds and new test clips (N defaults to the clips the components were estimated on)."""
    n = components.clips if clips is None else clips
    return components.seed / seeds + components.clip / n + components.residual / (seeds * n)


def bootstrap_variance(components: VarianceComponents, seeds: int, clips: int | None = None) -> float:
    """E V_boot(S, N): the expected variance of the paired two-level bootstrap on S seeds x N clips
    drawn from the model, tau2 (S-1)/S^2 + kappa2 (N-1)/N^2 + sigma2 (3SN - 2S - 2N + 1)/(S^2 N^2)."""
    s, n = seeds, components.clips if clips is None else clips
    return (components.seed * (s - 1) / s**2 + components.clip * (n - 1) / n**2
            + components.residual * (3 * s * n - 2 * s - 2 * n + 1) / (s**2 * n**2))


def exact_bootstrap_variance(d: np.ndarray) -> float:
    """The two-level bootstrap's variance of the mean of ``d`` on this data set (its limit over
    replicates): mean(r^2)/S + mean(k^2)/N + mean(e^2)/(S N) with r, k, e the seed effects, clip
    effects and residuals of ``d`` (the cross terms vanish exactly: rows and columns are drawn
    independently, and r, k and e each average to 0 over their index)."""
    d = _differences(d)
    seeds, clips = d.shape
    _, rows, columns, residual = _two_way(d)
    return float((rows**2).mean() / seeds + (columns**2).mean() / clips + (residual**2).mean() / (seeds * clips))


@dataclass(frozen=True)
class Projection:
    """At ``seeds`` x ``clips``: the projected bootstrap SE (``standard_error``, sqrt E V_boot) and
    the model's (``sampling_standard_error``, sqrt V), the 95% half-width z_0.975 x bootstrap SE, the
    difference detectable at 80% power (z_0.975 x bootstrap SE + z_0.80 x model SE) and the power
    of the verdict at the observed difference."""

    seeds: int
    clips: int
    standard_error: float
    sampling_standard_error: float
    half_width: float
    detectable: float
    power: float


def verdict_power(difference: float, standard_error: float, sampling_standard_error: float,
                  significance: float = SIGNIFICANCE) -> float:
    """The probability that the verdict settles (an interval of half-width z_{1 - significance/2} x
    ``standard_error`` excludes 0 on the side of the true ``difference``) when the observed difference
    is normal around the truth with ``sampling_standard_error``: Phi((|d| - z SE_boot) / SE)."""
    margin = abs(difference) - z_score(1 - significance / 2) * standard_error
    if sampling_standard_error == 0:
        return 1.0 if margin > 0 else 0.0
    return float(norm.cdf(margin / sampling_standard_error))


def project(components: VarianceComponents, seeds: int, clips: int | None = None,
            difference: float | None = None) -> Projection:
    """The projection at ``seeds`` (and ``clips``, default: as estimated); ``power`` at ``difference``
    (default: the observed mean difference).

    ``detectable`` = z_0.975 SE_boot + z_0.80 SE: the verdict "holds" when the observed difference
    exceeds z_0.975 SE_boot, which a true difference of this size brings about with 80% probability
    when the observed difference spreads with the model's SE around it. It is (z_0.975 + z_0.80) SE
    (:func:`crmt.statistics.minimum_detectable_difference`) when the two SEs agree, as they do from
    about 8 seeds on; with fewer, the bootstrap understates the seed variance and the projection
    does not count on that."""
    n = components.clips if clips is None else clips
    boot = math.sqrt(bootstrap_variance(components, seeds, n))
    model = math.sqrt(sampling_variance(components, seeds, n))
    z = z_score(1 - SIGNIFICANCE / 2)
    target = components.mean if difference is None else difference
    return Projection(seeds, n, boot, model, z * boot, z * boot + z_score(POWER) * model, verdict_power(target, boot, model))


def detectable_floor(components: VarianceComponents, clips: int | None = None) -> float:
    """The detectable difference with infinitely many seeds at N clips: only the clip effect is left,
    (z_0.975 sqrt((N-1)/N) + z_0.80) sqrt(kappa2 / N)."""
    n = components.clips if clips is None else clips
    return (z_score(1 - SIGNIFICANCE / 2) * math.sqrt((n - 1) / n) + z_score(POWER)) * math.sqrt(components.clip / n)


def seeds_needed(components: VarianceComponents, difference: float | None = None, clips: int | None = None,
                 limit: int = MAX_SEEDS) -> int | None:
    """The smallest S >= 2 whose projected detectable difference is at most |``difference``|
    (default: the observed mean), i.e. at which the verdict settles with at least 80% probability
    if the true difference is that large; None when no S up to ``limit`` does (with a shared test
    set, never below :func:`detectable_floor`)."""
    target = abs(components.mean if difference is None else difference)
    if target == 0 or detectable_floor(components, clips) >= target:
        return None
    for s in range(2, limit + 1):
        if project(components, s, clips, target).detectable <= target:
            return s
    return None


# --- the headline orderings of a comparison --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderingPower:
    """One headline ordering: a above b on outcome ``key``, its components and projections."""

    a: str
    b: str
    key: str
    components: VarianceComponents
    projections: tuple[Projection, ...]
    seeds_needed: int | None
    floor: float
    seeds_needed_upper: int | None = None

    @property
    def difference(self) -> float:
        return self.components.mean

    @classmethod
    def from_dict(cls, document: Mapping) -> OrderingPower:
        """The inverse of :meth:`as_dict` (as ``compare.json`` holds it)."""
        return cls(document["a"], document["b"], document["key"], VarianceComponents(**document["components"]),
                   tuple(Projection(**p) for p in document["projections"]), document["seeds_needed"],
                   document["detectable_floor"], document.get("seeds_needed_tau2_upper_80"))

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "key": self.key, "difference": self.difference,
                "components": asdict(self.components), "projections": [asdict(p) for p in self.projections],
                "seeds_needed": self.seeds_needed, "detectable_floor": self.floor,
                "seeds_needed_tau2_upper_80": self.seeds_needed_upper}


def paired_differences(outcomes: PairedOutcomes, a: str, b: str, key: str) -> np.ndarray:
    """The (S, N) per-(seed, clip) differences A - B of outcome ``key``."""
    return outcomes.correct[a][key] - outcomes.correct[b][key]


def headline_power(outcomes: PairedOutcomes, seeds: Sequence[int] = PROJECTED_SEEDS,
                   clips: int | None = None) -> list[OrderingPower]:
    """The power projection of every headline ordering present (:data:`HEADLINE_PAIRS` x
    :data:`HEADLINE_KEYS`); empty with fewer than 2 seeds."""
    if len(outcomes.seeds) < 2:
        return []
    result = []
    for a, b in HEADLINE_PAIRS:
        if a not in outcomes.correct or b not in outcomes.correct:
            continue
        for key in HEADLINE_KEYS:
            if key not in outcomes.correct[a] or key not in outcomes.correct[b]:
                continue
            components = variance_components(paired_differences(outcomes, a, b, key))
            result.append(OrderingPower(
                a, b, key, components, tuple(project(components, s, clips) for s in seeds),
                seeds_needed(components, clips=clips), detectable_floor(components, clips),
                seeds_needed(seed_variance_upper(components), components.mean, clips),
            ))
    return result


@dataclass(frozen=True)
class SubsampleCheck:
    """The projection checked by subsampling seeds: at ``seeds`` of the ``of`` seeds run, the bootstrap
    SE of each subset (paired bootstrap, ``replicates``), their root mean square, and the SE projected
    from the components of all ``of`` seeds; and the other way, the SE projected from each subset's
    components to all ``of`` seeds beside the bootstrap SE of all of them."""

    seeds: int
    of: int
    subset_standard_errors: tuple[float, ...]
    subset_rms: float
    projected_down: float
    projected_up: tuple[float, ...]
    full_standard_error: float


def subsample_check(d: np.ndarray, seeds: int, replicates: int = 4_000, generator_seed: int = 0) -> SubsampleCheck:
    """Every subset of ``seeds`` of the rows of ``d`` (2 <= seeds < S): does the bootstrap SE shrink
    from ``seeds`` to S seeds as projected?"""
    d = _differences(d)
    total = d.shape[0]
    if not 2 <= seeds < total:
        raise ValueError(f"subsample 2 <= seeds < {total}, got {seeds}")
    zero = np.zeros_like(d)
    full_components = variance_components(d)
    full = paired_bootstrap(d, zero, replicates=replicates, seed=generator_seed).standard_error
    subset_se, up = [], []
    for rows in itertools.combinations(range(total), seeds):
        part = d[list(rows)]
        subset_se.append(paired_bootstrap(part, zero[list(rows)], replicates=replicates, seed=generator_seed).standard_error)
        up.append(project(variance_components(part), total).standard_error)
    return SubsampleCheck(
        seeds, total, tuple(subset_se), float(np.sqrt(np.mean(np.square(subset_se)))),
        project(full_components, seeds).standard_error, tuple(up), full,
    )


def measured_widths_table(checks: Mapping[str, Sequence[SubsampleCheck]], differences: Mapping[str, float],
                          seeds: Sequence[int] = (3, 5)) -> str:
    """Markdown: per ordering, the 95% half-width and the difference detectable at 80% power *measured* at each of
    ``seeds`` (the root mean square of the bootstrap SE over every subset of that many of the seeds run) and at all
    the seeds run, beside the observed difference: how the interval narrows with seeds on these runs."""
    from crmt.robustness.report import markdown_table

    z = z_score(1 - SIGNIFICANCE / 2)
    first = next(iter(checks.values()))
    shown = [s for s in seeds if any(check.seeds == s for check in first)]
    total = first[0].of
    header = ["ordering", "difference", *(f"half-width / detectable, S = {s}" for s in (*shown, total))]
    rows = []
    for name, ordering_checks in checks.items():
        by_size = {check.seeds: check.subset_rms for check in ordering_checks}
        errors = [by_size[s] for s in shown] + [ordering_checks[0].full_standard_error]
        rows.append([name, f"{differences[name]:+.3f}",
                     *(f"{z * se:.3f} / {minimum_detectable_difference(se):.3f}" for se in errors)])
    return markdown_table(header, rows)


# --- reading and printing ---------------------------------------------------------------------------------------------


def ordering_name(a: str, b: str, key: str) -> str:
    from crmt.compare_report import LABELS

    subject = {"clean": "clean", "pgd": "PGD-l2 (paper, joint)", "adaptive": "Adaptive (joint)"}.get(key, key)
    return f"{LABELS.get(a, a)} above {LABELS.get(b, b)}, {subject}"


def seeds_cell(needed: int | None, floor: float, difference: float, clips: int, limit: int = MAX_SEEDS) -> str:
    """How a table states the seeds needed: a number, "none at N = ..." below the floor, or "> limit"."""
    if needed is not None:
        return str(needed)
    if difference == 0 or floor >= abs(difference):
        return f"none at N = {clips} (floor {floor:.3f})"
    return f"> {limit}"


def cost_per_seed(runs: Mapping[str, Sequence[SeedRun]]) -> float | None:
    """The recorded run time of one seed of every method: the sum over methods of each one's mean
    per-run wall time (None when a method has no recorded time)."""
    total = 0.0
    for seed_runs in runs.values():
        walls = [run.wall_seconds for run in seed_runs if run.wall_seconds is not None]
        if not walls:
            return None
        total += float(np.mean(walls))
    return total


def projection_table(powers: Sequence[OrderingPower]) -> str:
    """Markdown: per headline ordering, the observed difference, the difference detectable at 80%
    power at each projected number of seeds, and the seeds needed for the observed difference."""
    from crmt.robustness.report import markdown_table

    seeds = [q.seeds for q in powers[0].projections]
    header = ["ordering", "difference", *(f"detectable, S = {s}" for s in seeds), "seeds needed (80% power)"]
    rows = [
        [ordering_name(p.a, p.b, p.key), f"{p.difference:+.3f}", *(f"{q.detectable:.3f}" for q in p.projections),
         seeds_cell(p.seeds_needed, p.floor, p.difference, p.projections[0].clips)]
        for p in powers
    ]
    return markdown_table(header, rows)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def format_report(powers: Sequence[OrderingPower], checks: Mapping[str, Sequence[SubsampleCheck]] | None = None,
                  cost: float | None = None) -> str:
    """The CLI's text: per ordering its components, the projection at each number of seeds, the
    seeds needed (and their cost from ``cost`` s per seed), and the subsampling checks."""
    lines = []
    for p in powers:
        c, clips = p.components, p.projections[0].clips
        needed = seeds_cell(p.seeds_needed, p.floor, p.difference, clips)
        upper = seeds_cell(p.seeds_needed_upper, p.floor, p.difference, clips)
        lines += [
            (f"{ordering_name(p.a, p.b, p.key)}: difference {p.difference:+.3f} on S = {c.seeds} x N = {c.clips}; "
             f"tau2 (seed) {c.seed:.5f}, kappa2 (clip) {c.clip:.5f}, sigma2 (residual) {c.residual:.4f}"),
            "     S  N clips  95% half-width  detectable (80% power)  power at observed  bootstrap SE  model SE",
            *(f"  {q.seeds:4d}  {q.clips:7d}  {q.half_width:14.3f}  {q.detectable:22.3f}  {q.power:17.2f}  "
              f"{q.standard_error:12.3f}  {q.sampling_standard_error:8.3f}" for q in p.projections),
            f"  seeds needed for {p.difference:+.3f} at 80% power: {needed}"
            + (f" (about {_hours(p.seeds_needed * cost)} of runs)" if cost and p.seeds_needed else "")
            + f"; with tau2 at its 80% upper bound: {upper}"
            + (f" (about {_hours(p.seeds_needed_upper * cost)})" if cost and p.seeds_needed_upper else "")
            + f"; floor with infinitely many seeds at N = {clips}: {p.floor:.3f}",
        ]
        for check in (checks or {}).get(ordering_name(p.a, p.b, p.key), ()):
            lines.append(
                f"  check, S = {check.seeds} of {check.of}: bootstrap SE per subset "
                f"{', '.join(f'{v:.3f}' for v in check.subset_standard_errors)} (rms {check.subset_rms:.3f}) vs "
                f"projected from all {check.of} seeds {check.projected_down:.3f}; at S = {check.of}: bootstrap SE "
                f"{check.full_standard_error:.3f} vs projected from each subset "
                f"{', '.join(f'{v:.3f}' for v in check.projected_up)}"
            )
        lines.append("")
    if cost:
        lines.append(f"cost: {cost:.0f} s of recorded run time per seed for these methods (sum of their mean wall "
                     "times per run, at the clips run); S seeds cost S times that")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a comparison's output folder (<folder>/<experiment>/seed<s>/)")
    parser.add_argument("--experiments", nargs="+", default=None,
                        help="the experiments to read (default: every one in the folder, over the seeds they share)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(PROJECTED_SEEDS), help="numbers of seeds to project to")
    parser.add_argument("--clips", type=int, default=None, help="test clips per seed (default: as run)")
    parser.add_argument("--check", action="store_true", help="check the projection by subsampling the seeds run")
    parser.add_argument("--replicates", type=int, default=4_000, help="bootstrap replicates of the check")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    """Print (and return) the power projection of the comparison in ``folder``."""
    from crmt.compare_report import load_comparison_runs, pair_outcomes

    options = _parser().parse_args(argv)
    runs = load_comparison_runs(options.folder, options.experiments)
    outcomes = pair_outcomes(runs)
    powers = headline_power(outcomes, options.seeds, options.clips)
    if not powers:
        raise SystemExit(f"{options.folder}: no headline ordering with at least 2 seeds to project from")
    checks = {}
    if options.check:
        for p in powers:
            d = paired_differences(outcomes, p.a, p.b, p.key)
            checks[ordering_name(p.a, p.b, p.key)] = [
                subsample_check(d, s, options.replicates) for s in range(2, d.shape[0])
            ]
    text = (f"{options.folder}: methods {', '.join(runs)}, seeds {outcomes.seeds}, N = {outcomes.clips} clips. "
            "Projected to S seeds: bootstrap SE sqrt(E V_boot(S, N)), model SE sqrt(V(S, N)), 95% half-width "
            "z_0.975 x bootstrap SE, detectable (80% power) z_0.975 x bootstrap SE + z_0.80 x model SE, power of "
            "the verdict if the true difference is the observed one (python -m crmt.power --help: the model)\n\n"
            + format_report(powers, checks, cost_per_seed(runs)))
    if checks:
        differences = {ordering_name(p.a, p.b, p.key): p.difference for p in powers}
        text += ("\n\nMeasured on these runs (every subset of S of the seeds, bootstrap SE root-mean-squared over the "
                 "subsets; 95% half-width = z_0.975 SE, detectable = 2.80 SE):\n\n" + measured_widths_table(checks, differences))
    print(text)
    return text


if __name__ == "__main__":
    main()
