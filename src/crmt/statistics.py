"""Statistics of a multi-seed comparison: mean and spread over seeds, and the paired two-level
bootstrap that judges whether one method beats another on the same test clips.

The test, in words: two methods were each trained once per seed (the same seeds) and evaluated on
the same test clips, giving a 0/1 outcome per (seed, clip) for each method. A statistic (for example
the accuracy, or the gap between two attacks' accuracies) is computed for each method and the
difference A - B is the observed effect. Its sampling distribution is estimated by a paired,
two-level bootstrap: each of ``B`` replicates draws S seeds with replacement from the S seeds and C
clips with replacement from the C clips, applies the *same* draws to both methods (paired: the
clip-to-clip and seed-to-seed variation the two methods share cancels out), and recomputes the
difference. The standard error is the standard deviation of the replicated differences and the 95%
interval their 2.5th to 97.5th percentiles. A claimed ordering "holds" when the whole interval lies
on the claimed side of zero, is "reversed" when it lies wholly on the other side, and is "within
noise" otherwise (the interval contains zero).

Resampling both the training seeds and the test clips counts both sources of noise: a different
training run and a different test set. Like every bootstrap of a crossed (seed x clip) design that
resamples both factors, it counts the per-(seed, clip) noise at both levels, so it is conservative
where that noise dominates; with 2-3 seeds it understates a large seed-to-seed spread, which a
bootstrap over 3 values cannot estimate well. In simulations (400 data sets each, 60 clips, a true
difference of 0.1) the 95% interval covered the truth 99% of the time with 3 seeds and no seed
effect, 92-93% with 2-3 seeds and a seed effect larger than the clip noise, 96-98% with 5-10 seeds.

The power of the test: :func:`minimum_detectable_difference` is the smallest true difference that a
run with the observed standard error would find ("holds" or "reversed") with probability ``POWER``
(80%) at the two-sided level ``SIGNIFICANCE`` (5%): MDE = (z_{1 - 0.05/2} + z_{0.80}) x SE = 2.80 SE.
It assumes the bootstrap distribution of the difference is approximately normal with a spread that
does not depend on the true difference (then the interval's lower end is observed - 1.96 SE, and a
true difference of MDE puts it above 0 with probability Phi(0.84) = 80%). A "within noise" verdict
on a difference smaller than the MDE says the run could not have told that difference from 0; it
does not say the methods are equal. :mod:`crmt.power` projects the MDE to other numbers of seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import norm

Outcomes = np.ndarray | Mapping[str, np.ndarray]
"""Per-(seed, clip) outcomes of one method: one (S, C) array, or several named (S, C) arrays."""
Statistic = Callable[[Outcomes], float | np.ndarray]
"""Maps one method's outcomes to a number; a vectorised statistic maps (n, S, C) arrays to (n,)."""
Verdict = Literal["holds", "reversed", "within noise"]
SIGNIFICANCE = 0.05
"""The two-sided level of the verdicts' 95% interval."""
POWER = 0.80
"""The power at which :func:`minimum_detectable_difference` is stated."""


def z_score(probability: float) -> float:
    """The standard normal quantile at ``probability`` (scipy's ``norm.ppf``)."""
    return float(norm.ppf(probability))


def minimum_detectable_difference(standard_error: float, power: float = POWER, significance: float = SIGNIFICANCE) -> float:
    """(z_{1 - significance/2} + z_{power}) x ``standard_error``: the smallest true difference that a
    two-sided test at ``significance`` detects with probability ``power`` when the estimate is normal
    with that standard error (2.80 SE at 5% and 80%)."""
    if standard_error < 0 or not 0 < power < 1 or not 0 < significance < 1:
        raise ValueError(f"need SE >= 0 and power, significance in (0, 1); got {standard_error}, {power}, {significance}")
    return (z_score(1 - significance / 2) + z_score(power)) * standard_error


def seed_mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of one number per seed; the std of one seed is 0."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of per-seed values, got shape {array.shape}")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def mean_accuracy(outcomes: np.ndarray) -> float | np.ndarray:
    """Accuracy over every (seed, clip): the mean over the last two axes (vectorised)."""
    return np.asarray(outcomes, dtype=float).mean(axis=(-2, -1))


def absolute_gap(first: str, second: str) -> Statistic:
    """Statistic |accuracy(first) - accuracy(second)| of named outcomes, e.g. the two uni-modal PGDs (vectorised)."""

    def gap(outcomes: Mapping[str, np.ndarray]) -> float | np.ndarray:
        return np.abs(mean_accuracy(outcomes[first]) - mean_accuracy(outcomes[second]))

    gap.__name__ = f"|acc({first}) - acc({second})|"
    return gap


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap's estimate of statistic(A) - statistic(B).

    Attributes:
        observed: the difference on the data as observed.
        standard_error: standard deviation (ddof=1) of the replicated differences.
        interval: the percentile interval (low, high) at ``confidence``.
        replicates / confidence / seed: the bootstrap's settings.
    """

    observed: float
    standard_error: float
    interval: tuple[float, float]
    replicates: int
    confidence: float
    seed: int


def _as_named(outcomes: Outcomes) -> tuple[dict[str, np.ndarray], bool]:
    if isinstance(outcomes, Mapping):
        return {key: np.asarray(value, dtype=float) for key, value in outcomes.items()}, True
    return {"": np.asarray(outcomes, dtype=float)}, False


def _shape(named_a: Mapping[str, np.ndarray], named_b: Mapping[str, np.ndarray]) -> tuple[int, int]:
    if named_a.keys() != named_b.keys():
        raise ValueError(f"methods A and B have different outcome keys: {sorted(named_a)} vs {sorted(named_b)}")
    shapes = {array.shape for array in (*named_a.values(), *named_b.values())}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or 0 in next(iter(shapes)):
        raise ValueError(f"every outcome array must have the same non-empty (seeds, clips) shape, got {sorted(shapes)}")
    seeds, clips = next(iter(shapes))
    return seeds, clips


def paired_bootstrap(
    a: Outcomes,
    b: Outcomes,
    statistic: Statistic = mean_accuracy,
    *,
    replicates: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    vectorized: bool = True,
    chunk_elements: int = 4_000_000,
) -> BootstrapResult:
    """Paired two-level bootstrap of statistic(A) - statistic(B) over seeds and test clips.

    ``a`` and ``b`` are the two methods' outcomes, (S, C) arrays aligned by seed (row) and by test
    clip (column), or dicts of such arrays with the same keys (for statistics of several columns,
    such as :func:`absolute_gap`). Each of ``replicates`` replicates draws S row indices and C
    column indices uniformly with replacement from a generator seeded with ``seed``, takes the
    same rows and columns of every array of both methods, and records statistic(A*) -
    statistic(B*). Returns the observed difference, the standard error (the replicated
    differences' standard deviation) and the percentile interval at ``confidence``.

    ``vectorized``: ``statistic`` accepts a stack of replicates, arrays of shape (n, S, C), and
    returns (n,) values (like :func:`mean_accuracy`); otherwise it is called once per replicate
    on (S, C) arrays. ``chunk_elements`` bounds the size of one stack.
    """
    if replicates < 2:
        raise ValueError(f"replicates must be >= 2, got {replicates}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    named_a, is_mapping = _as_named(a)
    named_b, _ = _as_named(b)
    if isinstance(b, Mapping) != is_mapping:
        raise ValueError("A and B must both be arrays or both be dicts of arrays")
    seeds, clips = _shape(named_a, named_b)

    def evaluate(named: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(statistic(dict(named) if is_mapping else named[""]), dtype=float)

    observed = float(evaluate(named_a) - evaluate(named_b))
    generator = np.random.default_rng(seed)
    seed_draws = generator.integers(0, seeds, size=(replicates, seeds))
    clip_draws = generator.integers(0, clips, size=(replicates, clips))
    differences = np.empty(replicates)
    step = max(1, chunk_elements // (seeds * clips)) if vectorized else 1
    for start in range(0, replicates, step):
        rows = seed_draws[start:start + step, :, None]
        columns = clip_draws[start:start + step, None, :]
        resampled_a = {key: array[rows, columns] for key, array in named_a.items()}
        resampled_b = {key: array[rows, columns] for key, array in named_b.items()}
        if not vectorized:
            resampled_a = {key: array[0] for key, array in resampled_a.items()}
            resampled_b = {key: array[0] for key, array in resampled_b.items()}
        differences[start:start + step] = evaluate(resampled_a) - evaluate(resampled_b)
    tail = (1 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return BootstrapResult(observed, float(differences.std(ddof=1)), (float(low), float(high)), replicates, confidence, seed)


def verdict(interval: tuple[float, float], higher_is_better: bool = True) -> Verdict:
    """Judge a claimed ordering from the interval of the difference A - B.

    The claim is A > B (``higher_is_better``) or A < B. "holds": the interval lies entirely on the
    claimed side of zero; "reversed": entirely on the other side; "within noise": it contains zero
    (an end exactly at zero counts as containing it).
    """
    low, high = interval
    if low > high:
        raise ValueError(f"interval ends out of order: {interval}")
    if low > 0:
        return "holds" if higher_is_better else "reversed"
    if high < 0:
        return "reversed" if higher_is_better else "holds"
    return "within noise"


def overall_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for a claim made against several rivals: "holds" if it holds against every one,
    "reversed" if it is reversed against any, else "within noise"."""
    if not verdicts:
        raise ValueError("no verdicts to combine")
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "reversed" if "reversed" in verdicts else "within noise"
