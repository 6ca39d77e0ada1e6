"""The power of the paired two-level bootstrap (crmt.statistics.minimum_detectable_difference) and its
projection to other numbers of seeds (crmt.power), against independent computations: the normal
quantiles by hand, simulated outcomes with known variance components (seed effects of variance
tau2, clip effects of variance kappa2 shared by every seed, 0/1 outcomes of known probability), a
Monte-Carlo of the observed difference and of the bootstrap at S seeds, and the verdict's hit rate."""

from __future__ import annotations

import math
from itertools import combinations, pairwise

import numpy as np
import pytest
from scipy import stats

from crmt.power import (
    VarianceComponents,
    bootstrap_variance,
    detectable_floor,
    exact_bootstrap_variance,
    project,
    sampling_variance,
    seed_variance_upper,
    seeds_needed,
    subsample_check,
    variance_components,
)
from crmt.statistics import minimum_detectable_difference, paired_bootstrap, verdict

Z975, Z80 = 1.959963984540054, 0.8416212335729143  # the standard normal's 97.5th and 80th percentiles

# the synthetic comparison: clip difficulty p ~ U(LOW, HIGH) shared by both methods; method A is right with
# probability p + effect + a_seed + c_clip, a ~ U(-SEED_HALF, SEED_HALF) per seed, c ~ U(-CLIP_HALF, CLIP_HALF) per
# clip (the same for every seed); B with probability p. Outcomes independent given these probabilities.
LOW, HIGH, EFFECT, SEED_HALF, CLIP_HALF = 0.3, 0.6, 0.1, 0.2, 0.1


def _truth(effect: float = EFFECT) -> VarianceComponents:
    """The components of d = A - B under the synthetic design: tau2 = Var a, kappa2 = Var c, sigma2 =
    E[pA (1 - pA) + pB (1 - pB)] (the outcomes' own variance), by the moments of the uniforms."""
    mean_p, var_p = (LOW + HIGH) / 2, (HIGH - LOW) ** 2 / 12
    tau2, kappa2 = SEED_HALF**2 / 3, CLIP_HALF**2 / 3
    mean_a = mean_p + effect
    sigma2 = (mean_a - (var_p + tau2 + kappa2 + mean_a**2)) + (mean_p - (var_p + mean_p**2))
    return VarianceComponents(seed=tau2, clip=kappa2, residual=sigma2, mean=effect, seeds=3, clips=100)


def _simulate(rng: np.random.Generator, seeds: int, clips: int, effect: float = EFFECT):
    """Outcomes of A and B, (seeds, clips) each, and the drawn seed and clip effects."""
    p = rng.uniform(LOW, HIGH, size=clips)
    a = rng.uniform(-SEED_HALF, SEED_HALF, size=(seeds, 1))
    c = rng.uniform(-CLIP_HALF, CLIP_HALF, size=clips)
    first = (rng.random((seeds, clips)) < p + effect + a + c).astype(float)
    second = (rng.random((seeds, clips)) < p).astype(float)
    return first, second, a[:, 0], c, p


# --- the minimum detectable difference ---------------------------------------------------------------------------------


def test_minimum_detectable_difference_is_z975_plus_z80_times_the_standard_error():
    assert minimum_detectable_difference(0.05) == pytest.approx((Z975 + Z80) * 0.05, rel=1e-12)
    assert minimum_detectable_difference(1.0) == pytest.approx(2.8015852, abs=1e-6)
    # other power and level: z_0.995 + z_0.9
    assert minimum_detectable_difference(0.1, power=0.9, significance=0.01) == pytest.approx(
        (2.5758293035489 + 1.2815515655446) * 0.1, rel=1e-9)
    assert minimum_detectable_difference(0.0) == 0.0
    with pytest.raises(ValueError):
        minimum_detectable_difference(-0.1)


def test_a_true_difference_equal_to_the_mde_is_detected_about_80_percent_of_the_time():
    """One seed, 200 clips, independent 0/1 outcomes: the bootstrap SE is sqrt((pA qA + pB qB) / C).
    With the true difference set to (z_0.975 + z_0.80) x that SE, the verdict "holds" in about 80% of
    400 simulated comparisons (binomial test), and at half of it in about Phi(0.84 - 1.40) = 29%."""
    clips, base = 200, 0.5
    effect = 0.1
    for _ in range(50):  # the fixed point effect = MDE(SE(effect))
        effect = minimum_detectable_difference(math.sqrt(((base + effect) * (0.5 - effect) + base * base) / clips))
    rng = np.random.default_rng(11)
    for size, expected in ((effect, 0.80), (effect / 2, stats.norm.cdf(Z80 - (Z975 + Z80) / 2))):
        hits, datasets = 0, 400
        for index in range(datasets):
            first = (rng.random((1, clips)) < base + size).astype(float)
            second = (rng.random((1, clips)) < base).astype(float)
            hits += verdict(paired_bootstrap(first, second, replicates=400, seed=index).interval) == "holds"
        assert stats.binomtest(hits, datasets, expected).pvalue > 0.01, (size, hits / datasets, expected)


# --- the variance components and the projection -----------------------------------------------------------------------


def test_variance_components_recover_the_drawn_effects():
    """60 seeds x 400 clips: tau2 and kappa2 match the sample variances of the seed and clip effects
    actually drawn, sigma2 the mean outcome variance pA qA + pB qB of the cells; the observed mean
    the mean of A - B."""
    rng = np.random.default_rng(1)
    first, second, a, c, p = _simulate(rng, 60, 400)
    estimate = variance_components(first - second)
    probability = np.clip(p + EFFECT + a[:, None] + c, 0, 1)
    sigma2 = float(np.mean(probability * (1 - probability) + p * (1 - p)))
    assert estimate.seed == pytest.approx(np.var(a, ddof=1), rel=0.15)
    assert estimate.clip == pytest.approx(np.var(c, ddof=1), rel=0.25)
    assert estimate.residual == pytest.approx(sigma2, rel=0.02)
    assert estimate.mean == pytest.approx(float((first - second).mean()), abs=1e-12)
    assert (estimate.seeds, estimate.clips) == (60, 400)
    # and against the population values the uniforms were drawn from
    truth = _truth()
    assert estimate.seed == pytest.approx(truth.seed, rel=0.35)
    assert estimate.residual == pytest.approx(truth.residual, rel=0.02)


def test_variance_components_need_two_seeds_and_are_never_negative():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        variance_components(np.ones((1, 50)))
    identical = variance_components(np.zeros((3, 40)))
    assert identical.seed == identical.clip == identical.residual == 0.0
    rng = np.random.default_rng(2)
    d = rng.normal(size=(3, 40))  # no seed or clip effect: the raw moment estimates straddle 0
    noise = variance_components(d)
    seeds, clips = d.shape
    residual = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    ms_residual = (residual**2).sum() / ((seeds - 1) * (clips - 1))
    raw_seed = (clips * d.mean(axis=1).var(ddof=1) - ms_residual) / clips
    raw_clip = (seeds * d.mean(axis=0).var(ddof=1) - ms_residual) / seeds
    assert raw_seed < 0 and noise.seed == 0.0, "a negative moment estimate is truncated to 0"
    assert raw_clip > 0 and noise.clip == pytest.approx(raw_clip, rel=1e-12)


@pytest.mark.parametrize("seeds", [3, 8])
def test_projected_standard_errors_match_a_monte_carlo_at_s_seeds(seeds):
    """400 comparisons simulated at S seeds x 100 clips: the spread of their observed differences is
    sqrt(V(S, N)) and the mean of their bootstrap variances E V_boot(S, N), both from the true
    components."""
    truth, clips = _truth(), 100
    rng = np.random.default_rng(seeds)
    observed, boot = [], []
    for _ in range(400):
        first, second, *_ = _simulate(rng, seeds, clips)
        observed.append((first - second).mean())
        boot.append(exact_bootstrap_variance(first - second))
    assert np.std(observed, ddof=1) == pytest.approx(math.sqrt(sampling_variance(truth, seeds, clips)), rel=0.1)
    assert math.sqrt(np.mean(boot)) == pytest.approx(math.sqrt(bootstrap_variance(truth, seeds, clips)), rel=0.06)
    # the formulas by hand
    t, k, s = truth.seed, truth.clip, truth.residual
    assert sampling_variance(truth, seeds, clips) == pytest.approx(t / seeds + k / clips + s / (seeds * clips))
    assert bootstrap_variance(truth, seeds, clips) == pytest.approx(
        t * (seeds - 1) / seeds**2 + k * (clips - 1) / clips**2
        + s * (3 * seeds * clips - 2 * seeds - 2 * clips + 1) / (seeds**2 * clips**2))


def test_components_from_a_pilot_project_the_bootstrap_at_other_seed_counts():
    """Components estimated on a 30-seed pilot predict the bootstrap SE that ``paired_bootstrap`` itself
    gives, averaged over 150 comparisons at 4 seeds."""
    rng = np.random.default_rng(5)
    first, second, *_ = _simulate(rng, 30, 100)
    pilot = variance_components(first - second)
    variances = []
    for index in range(150):
        first, second, *_ = _simulate(rng, 4, 100)
        variances.append(paired_bootstrap(first, second, replicates=300, seed=index).standard_error ** 2)
    assert math.sqrt(np.mean(variances)) == pytest.approx(project(pilot, 4).standard_error, rel=0.12)


def test_exact_bootstrap_variance_is_the_paired_bootstraps():
    rng = np.random.default_rng(3)
    first, second, *_ = _simulate(rng, 5, 80)
    result = paired_bootstrap(first, second, replicates=20_000)
    assert result.standard_error == pytest.approx(math.sqrt(exact_bootstrap_variance(first - second)), rel=0.03)


def test_projection_detectable_difference_and_power_by_hand():
    truth = _truth()
    projection = project(truth, 5, 200)
    boot, model = math.sqrt(bootstrap_variance(truth, 5, 200)), math.sqrt(sampling_variance(truth, 5, 200))
    assert (projection.seeds, projection.clips) == (5, 200)
    assert projection.standard_error == pytest.approx(boot) and projection.sampling_standard_error == pytest.approx(model)
    assert projection.half_width == pytest.approx(Z975 * boot)
    assert projection.detectable == pytest.approx(Z975 * boot + Z80 * model)
    assert projection.power == pytest.approx(stats.norm.cdf((EFFECT - Z975 * boot) / model))
    # when the two SEs agree the detectable difference is (z_0.975 + z_0.80) SE
    clip_only = VarianceComponents(0.0, 0.01, 0.0, 0.05, 3, 10**6)
    agreed = project(clip_only, 7)
    assert agreed.detectable == pytest.approx(minimum_detectable_difference(agreed.standard_error), rel=1e-5)
    # it narrows with seeds, down to the floor the shared clips leave
    detectable = [project(truth, s).detectable for s in range(2, 60)]
    assert all(later < earlier for earlier, later in pairwise(detectable))
    floor = detectable_floor(truth)
    assert floor == pytest.approx((Z975 * math.sqrt(99 / 100) + Z80) * math.sqrt(truth.clip / 100))
    assert floor < detectable[-1] and project(truth, 10**7).detectable == pytest.approx(floor, rel=1e-3)


def test_seeds_needed_is_the_first_seed_count_whose_detectable_difference_is_reached():
    truth = _truth()
    needed = seeds_needed(truth)
    assert project(truth, needed).detectable <= EFFECT < project(truth, needed - 1).detectable
    assert seeds_needed(truth, difference=-EFFECT) == needed  # either direction
    assert seeds_needed(truth, difference=0.0) is None
    assert seeds_needed(truth, difference=0.9 * detectable_floor(truth)) is None  # below the floor
    assert seeds_needed(truth, difference=0.02, limit=10) is None


def test_at_the_seeds_needed_the_verdict_holds_as_often_as_projected():
    """Effect 0.15: at the projected seeds-needed S (and at S - 1) the verdict of 300 simulated
    comparisons holds about as often as the projected power says (at least 80% at S, less at S - 1)."""
    effect = 0.15
    truth = _truth(effect)
    needed = seeds_needed(truth)
    rng = np.random.default_rng(9)
    for seeds in (needed, needed - 1):
        projected = project(truth, seeds).power
        hits, datasets = 0, 300
        for index in range(datasets):
            first, second, *_ = _simulate(rng, seeds, 100, effect)
            hits += verdict(paired_bootstrap(first, second, replicates=400, seed=index).interval) == "holds"
        assert stats.binomtest(hits, datasets, projected).pvalue > 0.01, (seeds, hits / datasets, projected)
    assert project(truth, needed).power >= 0.8 > project(truth, needed - 1).power


def test_seed_variance_upper_bound_is_the_chi_square_bound():
    """With 3 seeds (2 degrees of freedom, an exponential of mean 2) the 80% upper bound multiplies
    MS_seed by 2 / (-2 ln 0.8)."""
    rng = np.random.default_rng(4)
    first, second, *_ = _simulate(rng, 3, 100)
    estimate = variance_components(first - second)
    upper = seed_variance_upper(estimate)
    assert upper.seed_mean_square == pytest.approx(estimate.seed_mean_square / -math.log(0.8))
    assert upper.seed == pytest.approx(max(0.0, (upper.seed_mean_square - estimate.residual) / 100))
    assert upper.seed > estimate.seed and (upper.clip, upper.residual) == (estimate.clip, estimate.residual)
    assert seeds_needed(upper, EFFECT) >= seeds_needed(estimate, EFFECT)


def test_subsample_check_compares_every_subset_with_the_projection():
    """4 seeds: every 2- and 3-seed subset is bootstrapped; the root mean square of their SEs agrees with
    the SE projected down from all 4 seeds, and the full SE is the paired bootstrap's."""
    rng = np.random.default_rng(6)
    first, second, *_ = _simulate(rng, 4, 150)
    d = first - second
    for size in (2, 3):
        check = subsample_check(d, size, replicates=2_000)
        assert len(check.subset_standard_errors) == len(check.projected_up) == len(list(combinations(range(4), size)))
        assert check.subset_rms == pytest.approx(check.projected_down, rel=0.1)
        assert check.full_standard_error == paired_bootstrap(d, np.zeros_like(d), replicates=2_000).standard_error
    with pytest.raises(ValueError):
        subsample_check(d, 4)


def test_measured_widths_table_states_the_bootstrap_se_of_each_subset_size():
    """The table's half-width and detectable difference at S seeds are z_0.975 and 2.80 times the root mean square of
    the subsets' bootstrap SEs, and at all the seeds run the full bootstrap SE."""
    from crmt.power import measured_widths_table

    rng = np.random.default_rng(8)
    first, second, *_ = _simulate(rng, 6, 120)
    d = first - second
    checks = {"A above B, clean": [subsample_check(d, s, replicates=1_000) for s in range(2, 6)]}
    table = measured_widths_table(checks, {"A above B, clean": float(d.mean())}).splitlines()
    assert table[0] == "| ordering | difference | half-width / detectable, S = 3 | half-width / detectable, S = 5 | half-width / detectable, S = 6 |"
    at_three, at_five, full = checks["A above B, clean"][1].subset_rms, checks["A above B, clean"][3].subset_rms, checks["A above B, clean"][0].full_standard_error
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    for cell, se in zip(cells[2:], (at_three, at_five, full), strict=True):
        assert cell == f"{1.959964 * se:.3f} / {2.801585 * se:.3f}"
