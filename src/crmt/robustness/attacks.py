"""Adversarial attacks in the model's (normalised) input space, for every strategy of the project.

All attacks are l2 and follow the paper's evaluation code (baselines.md §10): the objective is
the cross-entropy of the fused logits (its gradient taken without underflow, see
:func:`ascent_direction`); a step moves along the gradient normalised per sample;
perturbed pixel modalities are clamped to the valid pixel range ([0, 1] before
normalisation); audio is never clamped.

- multi-modal (``modalities=None``): one perturbation over all modalities whose *joint* l2
  norm (over every attacked input of a sample together) is at most ``eps``; PGD projects onto
  that joint ball after every step;
- uni-modal (``modalities=[m]``): only modality m moves; the other inputs are returned as the
  very same tensors (bit-identical);
- :func:`missing_modality`: one modality replaced by a constant fill.

Attacks run the model in evaluation mode (restored afterwards), differentiate with respect to
the inputs only (parameters and their ``.grad`` are untouched), work inside Lightning's
inference-mode evaluation loops, and never modify the clean inputs in place.

Shape: ``inputs`` is a list with one (B, ...) tensor per modality in the model's order,
``labels`` (B,); an attack returns a list of the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from crmt.models.protocol import MultiModalModel
from crmt.robustness.modes import eval_mode, input_gradients

def _safe_norm(norm: torch.Tensor) -> torch.Tensor:
    """Norms to divide by: zero norms become one, so a zero gradient gives a zero step."""
    return torch.where(norm > 0, norm, torch.ones_like(norm))


@dataclass(frozen=True)
class PixelRange:
    """Normalised input x = (p - mean) / std of pixels p in [0, 1], one mean/std per channel (dim 1)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"PixelRange needs one mean and one std > 0 per channel, got {self.mean} and {self.std}")

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp normalised ``x`` (B, C, ...) to the images of [0, 1] pixels."""
        shape = (1, len(self.mean)) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return torch.clamp(x, -mean / std, (1 - mean) / std)


PixelRanges = Sequence[PixelRange | None]
"""One optional pixel range per modality, in the model's modality order."""


def pixel_ranges_for(modalities: Sequence[str], normalization: dict | None) -> list[PixelRange | None]:
    """Per-modality ranges from a data module's ``pixel_normalization`` {name: (mean, std)}."""
    normalization = normalization or {}
    return [PixelRange(*map(tuple, normalization[name])) if name in normalization else None for name in modalities]


def joint_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """l2 norm of each sample over several (B, ...) tensors together: (B,)."""
    return torch.sqrt(sum(t.flatten(1).pow(2).sum(dim=1) for t in tensors))


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) budget as a (B,) tensor on ``like``'s device."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape[0])


def _broadcast(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_sample.view(-1, *([1] * (like.ndim - 1)))


class PartialModel:
    """The model as a function of the attacked inputs, the others held at their clean features.

    ``attacked`` (B, M) bool marks the modalities each sample's attack moves. A modality attacked
    in no sample is not encoded again: its features are computed once without gradients (or
    taken from ``features``, the clean features of every modality); one attacked in some samples
    only is encoded on those rows. So each attack step runs only the encoders it needs.
    """

    def __init__(
        self,
        model: MultiModalModel,
        inputs: Sequence[torch.Tensor],
        attacked: torch.Tensor,
        features: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.rows = [attacked[:, m] for m in range(len(inputs))]
        self.counts = [int(rows.sum()) for rows in self.rows]
        self.features: list[torch.Tensor | None] = []
        with torch.no_grad():
            for m, (x, rows, count) in enumerate(zip(inputs, self.rows, self.counts, strict=True)):
                if count == x.shape[0]:
                    self.features.append(None)
                elif features is not None:
                    self.features.append(features[m])
                else:
                    kept = model.encode_modality(m, x[~rows])
                    full = kept.new_zeros((x.shape[0], *kept.shape[1:]))
                    full[~rows] = kept
                    self.features.append(full)

    def logits(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits (B, K) at ``inputs`` (one tensor per modality; only attacked rows are read)."""
        features = []
        for m, (x, rows, count, clean) in enumerate(zip(inputs, self.rows, self.counts, self.features, strict=True)):
            if clean is None:
                features.append(self.model.encode_modality(m, x))
            elif count == 0:
                features.append(clean)
            else:
                mixed = clean.clone()
                mixed[rows] = self.model.encode_modality(m, x[rows])
                features.append(mixed)
        return self.model.fuse(features).logits


class L2PGD:
    """l2 projected gradient descent on the fused cross-entropy (Madry et al.; the paper's protocol).

    Args:
        eps: l2 budget (joint over the attacked modalities); 0.5 multi-modal and 1.0 uni-modal in the paper.
        steps: gradient steps (4 in the paper's code).
        step_fraction: size of each normalised step as a fraction of ``eps`` (1/3 in the paper's code).
        random_start: start from a uniformly random point of the ball instead of the clean input.
        modalities: indices of the attacked modalities; ``None`` attacks all of them jointly.

    Shape:
        ``inputs``: list of M tensors (B, ...); ``labels``: (B,); ``eps`` may be overridden per
        sample with a (B,) tensor. Returns the M adversarial tensors.

    Example::

        adversarial = L2PGD(eps=0.5)(model, [visual, audio], labels, pixel_ranges)
    """

    def __init__(
        self,
        eps: float = 0.5,
        steps: int = 4,
        step_fraction: float = 1 / 3,
        random_start: bool = False,
        modalities: Sequence[int] | None = None,
    ) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if step_fraction <= 0:
            raise ValueError(f"step_fraction must be > 0, got {step_fraction}")
        self.eps = eps
        self.steps = steps
        self.step_fraction = step_fraction
        self.random_start = random_start
        self.modalities = None if modalities is None else list(modalities)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, step_fraction={self.step_fraction:.4g}, "
            f"random_start={self.random_start}, modalities={self.modalities})"
        )

    def __call__(
        self,
        model: MultiModalModel,
        inputs: Sequence[torch.Tensor],
        labels: torch.Tensor,
        pixel_ranges: PixelRanges | None = None,
        *,
        eps: float | torch.Tensor | None = None,
        attacked: torch.Tensor | None = None,
        clean_gradients: Sequence[torch.Tensor] | None = None,
        start: Sequence[torch.Tensor] | None = None,
        features: Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Adversarial inputs.

        ``attacked``: (B, M) bool, the modalities each sample's attack moves (the joint ball is
        over those); it overrides ``modalities``, so that attacks on different modalities run
        as one batch. ``clean_gradients``: the loss gradient of every input at the clean inputs,
        when already known (see :func:`clean_pass`); it saves the first backward pass of a run
        without random start. ``start``: inputs to continue from (their perturbation projected
        into this attack's ball), e.g. the examples of a smaller budget; it replaces the random
        start. ``features``: every modality's features at the clean inputs, when already known;
        those of the samples' unattacked modalities are then not recomputed. ``generator`` draws
        the random start. ``clean_gradients``, ``start`` and ``features`` hold one tensor per
        modality; the entries of modalities that are not attacked are not read.
        """
        mask = self._mask(inputs) if attacked is None else attacked.bool()
        moving = [m for m in range(len(inputs)) if bool(mask[:, m].any())]
        ranges = list(pixel_ranges) if pixel_ranges is not None else [None] * len(inputs)
        clamps = [ranges[m] for m in moving]
        with eval_mode(model), input_gradients():
            clean = [inputs[m].detach().clone() for m in moving]
            keep = [_broadcast(mask[:, m].to(x.dtype), x) for m, x in zip(moving, clean, strict=True)]
            labels = labels.clone()
            budget = _per_sample(self.eps if eps is None else eps, clean[0])
            step = budget * self.step_fraction
            full = [x.detach() for x in inputs]
            partial = PartialModel(model, full, mask, features)
            if start is None:
                delta = self._start(clean, keep, budget, generator)
            else:
                delta = _project([(start[m].detach() - c) * k for m, c, k in zip(moving, clean, keep, strict=True)], budget)
            for index in range(self.steps):
                current = [_clamp(x + d, r) for x, d, r in zip(clean, delta, clamps, strict=True)]
                if index == 0 and clean_gradients is not None and start is None and not self.random_start:
                    gradients = [clean_gradients[m].detach() * k for m, k in zip(moving, keep, strict=True)]
                else:
                    gradients = _loss_gradients(partial, full, moving, current, labels)
                norm = _safe_norm(joint_norm(gradients))
                delta = [
                    (x - c) + _broadcast(step / norm, g) * g for x, c, g in zip(current, clean, gradients, strict=True)
                ]
                delta = _project(delta, budget)
                delta = [(_clamp(c + d, r) - c) * k for c, d, r, k in zip(clean, delta, clamps, keep, strict=True)]
            adversarial = [
                torch.where(k.bool(), c + d, c).detach() for c, d, k in zip(clean, delta, keep, strict=True)
            ]
        result = list(inputs)
        for m, x in zip(moving, adversarial, strict=True):
            result[m] = x
        return result

    def _mask(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, M) bool: every sample attacks ``modalities`` (all of them when ``None``)."""
        mask = torch.zeros(inputs[0].shape[0], len(inputs), dtype=torch.bool, device=inputs[0].device)
        mask[:, slice(None) if self.modalities is None else self.modalities] = True
        return mask

    def _start(
        self, clean: list[torch.Tensor], keep: list[torch.Tensor], budget: torch.Tensor, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Zero, or a point drawn uniformly from each sample's joint l2 ball of radius ``budget``."""
        if not self.random_start:
            return [torch.zeros_like(x) for x in clean]
        noise = [torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * k for x, k in zip(clean, keep)]
        size = sum(k.flatten() * x[0].numel() for x, k in zip(clean, keep, strict=True)).clamp_min(1)
        uniform = torch.rand(budget.shape, generator=generator, dtype=budget.dtype).to(budget.device)
        scale = budget * uniform ** (1 / size) / _safe_norm(joint_norm(noise))
        return [_broadcast(scale, n) * n for n in noise]


class FGM(L2PGD):
    """Fast gradient method, l2 (Miyato et al.): one step of size ``eps`` along the normalised gradient."""

    def __init__(self, eps: float = 0.5, modalities: Sequence[int] | None = None) -> None:
        super().__init__(eps=eps, steps=1, step_fraction=1.0, random_start=False, modalities=modalities)


def ascent_direction(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d CE / d logits per sample, rescaled per sample so that its largest entry is 1: (B, K).

    The cross-entropy gradient p - e_y underflows to exactly zero for a confident sample (a
    logit gap of ~100 in float32), which would leave it unattacked. Computed in the log domain
    and rescaled by exp(-max_{k != y} log p_k), it never underflows; a positive factor per
    sample does not change a normalised attack step.
    """
    log_p = torch.log_softmax(logits.detach().double(), dim=1)
    mask = F.one_hot(labels, logits.shape[1]).bool()
    others = log_p.masked_fill(mask, float("-inf"))
    scaled = torch.exp(others - others.max(dim=1, keepdim=True).values)
    direction = scaled.masked_fill(mask, 0.0)
    direction = direction - mask.double() * direction.sum(dim=1, keepdim=True)
    return direction.to(logits.dtype)


def _ascent_gradients(logits: torch.Tensor, labels: torch.Tensor, x: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Input gradients of the cross-entropy, each sample's up to a positive factor (see :func:`ascent_direction`)."""
    surrogate = (logits * ascent_direction(logits, labels)).sum()
    return [g.detach() for g in torch.autograd.grad(surrogate, list(x))]


class CleanPass(NamedTuple):
    """One forward and backward pass at the clean inputs: ``logits`` (B, K), the cross-entropy's
    ascent direction w.r.t. every input (``gradients``) and every modality's ``features``."""

    logits: torch.Tensor
    gradients: list[torch.Tensor]
    features: list[torch.Tensor]


def clean_pass(model: MultiModalModel, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> CleanPass:
    """Logits, input gradients and features at the clean inputs, from one forward and one backward.

    Each sample's gradient is exact up to a positive factor (see :func:`ascent_direction`), which
    is all a normalised attack step uses.
    """
    with eval_mode(model), input_gradients():
        x = [t.detach().clone().requires_grad_(True) for t in inputs]
        features = [model.encode_modality(m, xm) for m, xm in enumerate(x)]
        logits = model.fuse(features).logits
        gradients = _ascent_gradients(logits, labels.clone(), x)
    return CleanPass(logits.detach(), gradients, [f.detach() for f in features])


def _loss_gradients(
    partial: PartialModel, inputs: list[torch.Tensor], moving: list[int], current: list[torch.Tensor], labels: torch.Tensor
) -> list[torch.Tensor]:
    """Ascent gradients w.r.t. ``current``, the inputs of the ``moving`` modalities (the rest: ``inputs``)."""
    x = [t.detach().requires_grad_(True) for t in current]
    full = list(inputs)
    for m, xm in zip(moving, x, strict=True):
        full[m] = xm
    return _ascent_gradients(partial.logits(full), labels, x)


def rescaled(clean: Sequence[torch.Tensor], adversarial: Sequence[torch.Tensor], radius: torch.Tensor) -> list[torch.Tensor]:
    """``clean`` plus the perturbation ``adversarial - clean`` rescaled to joint l2 norm ``radius`` (B,)
    (a zero perturbation stays zero): the start of an attack continued at another budget."""
    delta = [a - c for c, a in zip(clean, adversarial, strict=True)]
    norm = joint_norm(delta)
    factor = torch.where(norm > 0, radius / _safe_norm(norm), torch.zeros_like(norm))
    return [c + _broadcast(factor, d) * d for c, d in zip(clean, delta, strict=True)]


def _project(delta: list[torch.Tensor], budget: torch.Tensor) -> list[torch.Tensor]:
    """Scale each sample's joint perturbation onto the l2 ball of radius ``budget`` (B,)."""
    factor = torch.clamp(budget / _safe_norm(joint_norm(delta)), max=1.0)
    return [_broadcast(factor, d) * d for d in delta]


def _clamp(x: torch.Tensor, pixel_range: PixelRange | None) -> torch.Tensor:
    return x if pixel_range is None else pixel_range.clamp(x)


def missing_modality(inputs: Sequence[torch.Tensor], modality: int, fill: float = 0.0) -> list[torch.Tensor]:
    """The inputs with modality ``modality`` replaced by the constant ``fill`` (0: the normalised mean)."""
    result = list(inputs)
    result[modality] = torch.full_like(inputs[modality], fill)
    return result


def predict(model: MultiModalModel, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Predicted classes (B,) in evaluation mode, without gradients."""
    with torch.inference_mode(False), torch.no_grad(), eval_mode(model):
        return model([x.clone() for x in inputs]).logits.argmax(dim=1)
