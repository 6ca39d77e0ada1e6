"""Randomized smoothing for multi-modal models (Cohen, Rosenfeld and Kolter, ICML 2019).

The smoothed classifier of a base classifier f is g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I),
in the model's normalised input space. Cohen et al.'s CERTIFY (:func:`certify`) returns g's class
with an l2 radius sigma * Phi^-1(p_A_low) that holds with probability at least 1 - alpha over the
noise (Theorem 1 with p_B_up = 1 - p_A_low); PREDICT (:func:`predict`) returns g's class or abstains.
No radius exceeds :func:`max_certified_radius`, sigma * Phi^-1(alpha^(1/n)). Facts and check numbers:
docs/robustness.md, "Randomized smoothing".

Scopes (:class:`SmoothingCertifier`):

- ``"joint"``: noise on every modality; the radius bounds the l2 norm of the joint perturbation
  (d^(1), ..., d^(M)), the threat model of the project's multi-modal attacks;
- one per modality name: noise on that modality alone, the others fixed at their clean values; g is
  then a smoothed classifier of that modality's input, and the radius bounds perturbations of it alone.

Noise is drawn on the model's device from one generator per (seed, dataset index, scope)
(:func:`noise_generator`), so a sample's certificate is the same whatever the batch, the rank or the
order (a CUDA run draws other noise than a CPU run; at paper sizes, host-drawn noise would cost
more than the forward passes).
Modalities that are not noised are encoded once per sample and their features reused for every draw.

Shapes: ``inputs`` is one (1, ...) tensor per modality in ``model.modalities`` order for the
per-sample functions, one (B, ...) tensor per modality for :meth:`SmoothingCertifier.update`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from crmt.distributed import AllGather, gather_rows
from crmt.models.protocol import MultiModalModel
from crmt.robustness.modes import eval_mode, float32_math
from crmt.robustness.progress import CostTask, Progress, plural

ABSTAIN: int = -1
"""The class returned when the smoothed classifier's top class is not significant."""

JOINT_SCOPE = "joint"
"""The scope with noise on every modality."""


@dataclass(frozen=True)
class SmoothingSettings:
    """sigma: noise std in the normalised input space (one value for every noised modality);
    n0: selection draws; n: estimation draws; alpha: failure probability of each certificate;
    batch: noise draws per forward pass; samples: test samples certified, by all ranks together
    (None: all), spread evenly over the test split (:func:`evenly_spaced`); seed: seeds the noise,
    with the sample's dataset index."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    samples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "sigma": (self.sigma > 0, "> 0"),
            "n0": (self.n0 >= 1, ">= 1"),
            "n": (self.n >= 1, ">= 1"),
            "alpha": (0 < self.alpha < 1, "in (0, 1)"),
            "batch": (self.batch >= 1, ">= 1"),
            "samples": (self.samples is None or self.samples >= 0, ">= 0 or None"),
            "seed": (self.seed >= 0, ">= 0"),
        }
        for name, (valid, requirement) in checks.items():
            if not valid:
                raise ValueError(f"SmoothingSettings.{name} must be {requirement}, got {getattr(self, name)}")


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial proportion:
    the alpha quantile of Beta(k, n - k + 1) (scipy.stats.beta.ppf), 0 when k = 0 (CERTIFY, step 3)."""
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials], got {successes} of {trials}")
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def max_certified_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` estimation draws: every draw votes for c_A, so
    p_A_low = :func:`clopper_pearson_lower` (n, n, alpha) = alpha^(1/n) and R_max = sigma * Phi^-1(alpha^(1/n))."""
    return sigma * float(norm.ppf(clopper_pearson_lower(n, n, alpha)))


def noise_generator(seed: int, index: int, scope: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded by (seed, dataset index, scope number) through numpy's
    SeedSequence, so every sample's noise is the same whatever the batch, the rank or the order
    (scope: 0 joint, 1 + m modality m). Noise is drawn where the model runs: a CUDA run draws other
    (equally distributed) noise than a CPU run, and is not slowed by drawing it on the host."""
    state = np.random.SeedSequence([seed, index, scope]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def evenly_spaced(size: int, count: int) -> frozenset[int]:
    """``min(count, size)`` dataset indices spread evenly over ``range(size)``: floor(j * size / count),
    j < count (every index when count >= size). Splits are often stored class by class, so the first
    ``count`` clips would be a few classes only."""
    return frozenset(range(size) if count >= size else (j * size // count for j in range(count)))


def _clean_features(model: MultiModalModel, inputs: Sequence[torch.Tensor], noised: Sequence[int]) -> list[torch.Tensor | None]:
    """Features (1, D_m) of each modality that is not noised (``None`` for the noised ones)."""
    return [None if m in noised else model.encode_modality(m, x) for m, x in enumerate(inputs)]


def _noisy_predictions(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    clean: Sequence[torch.Tensor | None],
    sigma: float,
    draws: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """argmax f(x + e) (draws,) for ``draws`` noise draws in one forward pass: noise drawn on the
    generator's device for each noised modality (``clean[m] is None``), in modality order; clean
    features expanded."""
    features = []
    for m, (x, feature) in enumerate(zip(inputs, clean, strict=True)):
        if feature is None:
            noise = torch.randn((draws, *x.shape[1:]), generator=generator, device=generator.device) * sigma
            features.append(model.encode_modality(m, x + noise.to(device=x.device, dtype=x.dtype)))
        else:
            features.append(feature.expand(draws, *feature.shape[1:]))
    return model.fuse(features).logits.argmax(dim=1)


def class_counts(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    noised: Sequence[int],
    sigma: float,
    draws: int,
    batch: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Counts (K,) int64 of the base classifier's predictions argmax f(x + e) over ``draws`` noise
    draws for ONE sample (``inputs``: one (1, ...) tensor per modality), Gaussian noise of std sigma
    added only to the modalities in ``noised`` (the others stay clean), ``batch`` draws per forward.
    Noise is drawn from ``generator`` on its device (see :func:`noise_generator`)."""
    if any(x.shape[0] != 1 for x in inputs):
        raise ValueError(f"class_counts certifies one sample: inputs of shapes {[tuple(x.shape) for x in inputs]}")
    counts = torch.zeros(model.num_classes, dtype=torch.int64)
    with eval_mode(model), float32_math(), torch.no_grad():
        clean = _clean_features(model, inputs, noised)
        for start in range(0, draws, batch):
            predictions = _noisy_predictions(model, inputs, clean, sigma, min(batch, draws - start), generator)
            counts += torch.bincount(predictions.cpu(), minlength=model.num_classes)
    return counts


def certify(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    noised: Sequence[int],
    settings: SmoothingSettings,
    generator: torch.Generator,
) -> tuple[int, float]:
    """Cohen et al.'s CERTIFY for one sample: c_A from ``settings.n0`` draws, p_A_low (Clopper-Pearson,
    level ``settings.alpha``) from ``settings.n`` fresh draws; (c_A, sigma * Phi^-1(p_A_low)), or
    (ABSTAIN, 0.0) when p_A_low <= 1/2 (scipy.stats.norm.ppf). Shapes as :func:`class_counts`."""
    draw = (model, inputs, noised, settings.sigma)
    top = int(class_counts(*draw, settings.n0, settings.batch, generator).argmax())
    counts = class_counts(*draw, settings.n, settings.batch, generator)
    lower = clopper_pearson_lower(int(counts[top]), settings.n, settings.alpha)
    if lower <= 0.5:
        return ABSTAIN, 0.0
    return top, settings.sigma * float(norm.ppf(lower))


def predict(
    model: MultiModalModel,
    inputs: Sequence[torch.Tensor],
    noised: Sequence[int],
    sigma: float,
    n: int,
    alpha: float,
    batch: int,
    generator: torch.Generator,
) -> int:
    """Cohen et al.'s PREDICT for one sample: the top class of ``n`` draws if a two-sided binomial
    test (scipy.stats.binomtest) of n_A out of n_A + n_B at p = 1/2 has p-value <= alpha, else
    ABSTAIN (wrong with probability at most alpha). Shapes as :func:`class_counts`."""
    counts = class_counts(model, inputs, noised, sigma, n, batch, generator)
    (n_a, n_b), (top, _) = torch.topk(counts, 2)
    if binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue <= alpha:
        return int(top)
    return ABSTAIN


@dataclass
class SmoothedCertificates:
    """Per certified sample, for one scope: ``prediction`` (N,) int64 (ABSTAIN = -1), ``radius`` (N,)
    float64, as computed (0 where abstained), ``label`` (N,), ``index`` (N,) dataset indices."""

    prediction: torch.Tensor
    radius: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor

    def correct(self) -> torch.Tensor:
        """(N,) bool: the smoothed prediction is the label (never for ABSTAIN)."""
        return self.prediction == self.label

    def abstention_rate(self) -> float:
        """Share of the samples where CERTIFY abstained (nan for no sample)."""
        return (self.prediction == ABSTAIN).float().mean().item()


@dataclass
class _ScopeRecords:
    """What one scope has certified so far on this rank."""

    prediction: list[int] = field(default_factory=list)
    radius: list[float] = field(default_factory=list)


class SmoothingCertifier:
    """Certifies the samples it is fed, per scope: "joint" (noise on every modality: an l2 certificate
    on the joint perturbation) and one per modality (noise on that modality alone, the others clean:
    a certificate against attacks on that modality alone).

    Each sample's noise comes from :func:`noise_generator` (``settings.seed``, its dataset index, the
    scope number), so results do not depend on batches, ranks or order. With ``dataset_size`` (the
    test split's), the certified samples are the ``settings.samples`` dataset indices of
    :func:`evenly_spaced`, whichever rank meets them; without it, the first ``settings.samples`` each
    rank meets. Usage: :meth:`update` on every test batch, then :meth:`finalize` on every rank.

    With ``progress`` (a :class:`~crmt.robustness.progress.Progress`), the certification announces itself
    before its first clip (the clips, all ranks' and this rank's, the scopes and the draws per clip), prints
    the time left measured on that first clip (its seconds times the clips still to come on this rank), shows
    a bar over this rank's clips and prints its total once done (in :meth:`finalize` at the latest);
    ``expected`` (the test samples this rank will be fed, when known) sizes the counts where the split's size
    does not. Timing changes no draw.
    """

    def __init__(
        self, model: MultiModalModel, settings: SmoothingSettings, dataset_size: int | None = None,
        progress: Progress | None = None, expected: int | None = None,
    ) -> None:
        if JOINT_SCOPE in model.modalities:
            raise ValueError(f"a modality named {JOINT_SCOPE!r} would clash with the joint scope")
        self.model = model
        self.settings = settings
        self.scopes: dict[str, list[int]] = {
            JOINT_SCOPE: list(range(len(model.modalities))),
            **{name: [m] for m, name in enumerate(model.modalities)},
        }
        self.records = {name: _ScopeRecords() for name in self.scopes}
        self.labels: list[int] = []
        self.indices: list[int] = []
        self.chosen = None if settings.samples is None or dataset_size is None else evenly_spaced(dataset_size, settings.samples)
        self.progress = progress
        self.expected = expected
        self.task: CostTask | None = None

    def clip_counts(self) -> tuple[int | None, int | None]:
        """(all ranks', this rank's) clips to certify, None where unknown. With the split's size, all ranks'
        are the chosen indices, this rank's its share (about 1 / ranks of them: the chosen indices are spread
        evenly, and so are the ranks' shards); without it, every rank certifies the first ``samples`` of the
        ``expected`` clips it is fed."""
        ranks = self.progress.ranks if self.progress is not None else 1
        if self.chosen is not None:
            total = len(self.chosen)
            here = total if ranks == 1 else math.ceil(total / ranks)
            return total, here if self.expected is None else min(here, self.expected)
        if self.expected is None:
            return (self.settings.samples * ranks, self.settings.samples) if self.settings.samples is not None else (None, None)
        here = self.expected if self.settings.samples is None else min(self.settings.samples, self.expected)
        return here * ranks, here

    def announcement(self) -> str:
        """What :meth:`update` runs: clips, scopes, draws per clip and forward passes."""
        s = self.settings
        total, here = self.clip_counts()
        ranks = self.progress.ranks if self.progress is not None else 1
        clips = "every test clip" if total is None else plural(total, "test clip")
        if ranks > 1:
            clips += f" (all {ranks} ranks together; {'all it is fed' if here is None else f'about {here}'} on this rank),"
        scopes = len(self.scopes)
        passes = scopes * (math.ceil(s.n0 / s.batch) + math.ceil(s.n / s.batch))
        return (f"CERTIFY of {clips} in {scopes} scopes ({', '.join(self.scopes)}), n0 {s.n0} + n {s.n} = {s.n0 + s.n} "
                f"noise draws per clip and scope ({scopes * (s.n0 + s.n)} per clip, {passes} forward passes of at most "
                f"{s.batch} draws), sigma {s.sigma}; time left estimated from the first clip")

    def update(self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> None:
        """Certify the batch's samples that are chosen (see the class docstring).
        ``inputs``: one (B, ...) tensor per modality; ``labels``, ``index``: (B,)."""
        for i in range(labels.shape[0]):
            if self._wanted(int(index[i])):
                self._certify_sample([x[i : i + 1] for x in inputs], int(index[i]))
                self.labels.append(int(labels[i]))
                self.indices.append(int(index[i]))

    def _wanted(self, index: int) -> bool:
        if self.chosen is not None:
            return index in self.chosen
        return self.settings.samples is None or len(self.indices) < self.settings.samples

    def _certify_sample(self, inputs: list[torch.Tensor], index: int) -> None:
        """CERTIFY one sample ((1, ...) per modality) in every scope, scope s drawing from generator (seed, index, s);
        timed and counted with ``progress``."""
        if self.progress is None:
            self._certify_scopes(inputs, index)
            return
        if self.task is None:
            self.task = self.progress.task("Randomized smoothing", self.announcement(), self.clip_counts()[1])
        with self.task.step(1):
            self._certify_scopes(inputs, index)

    def _certify_scopes(self, inputs: list[torch.Tensor], index: int) -> None:
        for number, (name, noised) in enumerate(self.scopes.items()):
            generator = noise_generator(self.settings.seed, index, number, inputs[0].device)
            prediction, radius = certify(self.model, inputs, noised, self.settings, generator)
            self.records[name].prediction.append(prediction)
            self.records[name].radius.append(radius)

    def finalize(self, all_gather: AllGather | None = None) -> dict[str, SmoothedCertificates]:
        """Keys "joint" and each modality name; every rank's samples gathered (``all_gather`` as in
        :func:`crmt.distributed.gather_rows`) in rank order, on the CPU. Every rank must call it."""
        if self.task is not None:
            self.task.close()

        def gather(values: list, dtype: torch.dtype) -> torch.Tensor:
            rows = torch.tensor(values, dtype=dtype, device=self.model.device)
            return gather_rows(all_gather, rows).cpu()

        label = gather(self.labels, torch.int64)
        index = gather(self.indices, torch.int64)
        return {
            name: SmoothedCertificates(
                prediction=gather(records.prediction, torch.int64),
                radius=gather(records.radius, torch.float64),
                label=label,
                index=index,
            )
            for name, records in self.records.items()
        }
