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
    """The model as a function of the attacked modalities only, the others held at their features.

    Features of the modalities that are not attacked are computed once without gradients (or
    taken from ``features``, the clean features of every modality), so each attack step runs
    only the attacked encoders and the fusion.
    """

    def __init__(
        self,
        model,
        inputs: Sequence[torch.Tensor],
        attacked: Sequence[int],
        features: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.attacked = list(attacked)
        with torch.no_grad():
            self.features = [
                None if m in self.attacked else (features[m] if features is not None else model.encode_modality(m, x))
                for m, x in enumerate(inputs)
            ]

    def logits(self, attacked_inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        features = list(self.features)
        for m, x in zip(self.attacked, attacked_inputs, strict=True):
            features[m] = self.model.encode_modality(m, x)
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
        model,
        inputs: Sequence[torch.Tensor],
        labels: torch.Tensor,
        pixel_ranges: PixelRanges | None = None,
        *,
        eps: float | torch.Tensor | None = None,
        clean_gradients: Sequence[torch.Tensor] | None = None,
        start: Sequence[torch.Tensor] | None = None,
        features: Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Adversarial inputs.

        ``clean_gradients``: the loss gradient of each attacked modality at the clean inputs, when
        already known (see :func:`clean_pass`); it saves the first backward pass of a run
        without random start. ``start``: adversarial inputs of the attacked modalities to continue
        from (projected into this attack's ball), e.g. those of a smaller budget; it replaces the
        random start. ``features``: every modality's features at the clean inputs, when already
        known; those of the modalities not attacked are then not recomputed. ``generator`` draws
        the random start.
        """
        attacked = list(range(len(inputs))) if self.modalities is None else self.modalities
        ranges = list(pixel_ranges) if pixel_ranges is not None else [None] * len(inputs)
        clamps = [ranges[m] for m in attacked]
        with eval_mode(model), input_gradients():
            clean = [inputs[m].detach().clone() for m in attacked]
            labels = labels.clone()
            budget = _per_sample(self.eps if eps is None else eps, clean[0])
            step = budget * self.step_fraction
            partial = PartialModel(model, [x.detach().clone() for x in inputs], attacked, features)
            if start is None:
                delta = self._start(clean, budget, generator)
            else:
                delta = _project([s.detach() - c for s, c in zip(start, clean, strict=True)], budget)
            for index in range(self.steps):
                current = [_clamp(x + d, r) for x, d, r in zip(clean, delta, clamps, strict=True)]
                if index == 0 and clean_gradients is not None and start is None and not self.random_start:
                    gradients = [g.detach() for g in clean_gradients]
                else:
                    gradients = _loss_gradients(partial, current, labels)
                norm = _safe_norm(joint_norm(gradients))
                delta = [
                    (x - c) + _broadcast(step / norm, g) * g for x, c, g in zip(current, clean, gradients, strict=True)
                ]
                delta = _project(delta, budget)
                delta = [_clamp(c + d, r) - c for c, d, r in zip(clean, delta, clamps, strict=True)]
            adversarial = [(c + d).detach() for c, d in zip(clean, delta, strict=True)]
        result = list(inputs)
        for m, x in zip(attacked, adversarial, strict=True):
            result[m] = x
        return result

    def _start(
        self, clean: list[torch.Tensor], budget: torch.Tensor, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Zero, or a point drawn uniformly from the joint l2 ball of radius ``budget``."""
        if not self.random_start:
            return [torch.zeros_like(x) for x in clean]
        noise = [torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) for x in clean]
        size = sum(x[0].numel() for x in clean)
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


def clean_pass(model, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> CleanPass:
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


def _loss_gradients(partial: PartialModel, current: list[torch.Tensor], labels: torch.Tensor) -> list[torch.Tensor]:
    x = [t.detach().requires_grad_(True) for t in current]
    return _ascent_gradients(partial.logits(x), labels, x)


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


def predict(model, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Predicted classes (B,) in evaluation mode, without gradients."""
    with torch.inference_mode(False), torch.no_grad(), eval_mode(model):
        return model([x.clone() for x in inputs]).logits.argmax(dim=1)
