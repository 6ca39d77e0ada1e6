"""The threat model of every attack: each sample's joint l2 ball over the modalities it attacks,
intersected with the valid pixel range of the pixel modalities.

A :class:`Ball` declares, per sample of a batch, the l2 ``budget`` (B,) and the ``attacked``
modalities (B, M): a multi-modal attack moves every modality under one budget on the *joint*
norm sqrt(sum_m ||d^(m)||^2); a uni-modal attack moves one. Samples of one batch may differ in
both, so that attacks on several scopes or at per-sample budgets (the radius audit) run as one
batch. Frames are clamped to the images of [0, 1] pixels (:class:`PixelRange`); audio is not.
A sample with no attacked modality or a zero budget is not attacked at all.

Shapes: perturbations are lists with one (B, ...) tensor per *moving* modality (those attacked in
at least one sample, :attr:`Ball.moving`), in the model's modality order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def safe_norm(norm: torch.Tensor) -> torch.Tensor:
    """Norms to divide by: zero norms become one, so a zero vector stays zero."""
    return torch.where(norm > 0, norm, torch.ones_like(norm))


def joint_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """l2 norm of each sample over several (B, ...) tensors together: (B,)."""
    return torch.sqrt(sum(t.flatten(1).pow(2).sum(dim=1) for t in tensors))


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) ``values`` shaped to broadcast against the (B, ...) tensor ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


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
    """One range per modality of ``modalities`` (``None``: not clamped) from a ``pixel_normalization``
    {name: (mean per channel, std per channel)} (:data:`crmt.models.protocol.PixelNormalization`: a model's,
    linked from its data module, or a data module's); ``None`` or ``{}``: no pixel modality."""
    normalization = normalization or {}
    return [PixelRange(*map(tuple, normalization[name])) if name in normalization else None for name in modalities]


def clamp_pixels(x: torch.Tensor, pixel_range: PixelRange | None) -> torch.Tensor:
    """``x`` clamped to ``pixel_range`` (unchanged when ``None``)."""
    return x if pixel_range is None else pixel_range.clamp(x)


@dataclass(frozen=True)
class Ball:
    """Where an attack may move each sample of a batch.

    Attributes:
        budget: (B,) l2 budget of each sample, on the joint norm over its attacked modalities.
        attacked: (B, M) bool, the modalities each sample's attack moves.
        pixel_ranges: one per modality (``None``: not clamped).
        carried: the moving modalities of the ball this one is a subset of (``None``: its own), so that
            the perturbation lists of an attack keep their modalities when it drops samples.
    """

    budget: torch.Tensor
    attacked: torch.Tensor
    pixel_ranges: tuple[PixelRange | None, ...]
    carried: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.budget.ndim != 1 or self.attacked.shape != (self.budget.shape[0], len(self.pixel_ranges)):
            raise ValueError(
                f"a Ball needs budget (B,) and attacked (B, M) with M = {len(self.pixel_ranges)} pixel ranges, "
                f"got {tuple(self.budget.shape)} and {tuple(self.attacked.shape)}"
            )
        if bool((self.budget < 0).any()):
            raise ValueError(f"budgets must be >= 0, got a minimum of {self.budget.min().item()}")

    @classmethod
    def around(
        cls,
        inputs: Sequence[torch.Tensor],
        eps: float | torch.Tensor,
        modalities: Sequence[int] | None = None,
        pixel_ranges: PixelRanges | None = None,
    ) -> Ball:
        """Every sample of ``inputs`` within ``eps`` (a scalar or (B,)) on ``modalities`` (all when ``None``)."""
        size = inputs[0].shape[0]
        budget = torch.as_tensor(eps, dtype=inputs[0].dtype, device=inputs[0].device).expand(size).clone()
        ranges = tuple(pixel_ranges) if pixel_ranges is not None else (None,) * len(inputs)
        return cls.blocks([budget], [range(len(inputs)) if modalities is None else modalities], ranges)

    @classmethod
    def blocks(cls, budgets: Sequence[torch.Tensor], attacked: Sequence[Sequence[int]], pixel_ranges: PixelRanges) -> Ball:
        """Blocks of samples stacked into one ball: the samples of block j have the budgets ``budgets[j]``
        (B_j,) on the modalities ``attacked[j]``; one pixel range per modality."""
        masks = []
        for budget, modalities in zip(budgets, attacked, strict=True):
            mask = torch.zeros(budget.shape[0], len(pixel_ranges), dtype=torch.bool, device=budget.device)
            mask[:, list(modalities)] = True
            masks.append(mask)
        return cls(torch.cat(list(budgets)), torch.cat(masks), tuple(pixel_ranges))

    @property
    def size(self) -> int:
        return int(self.budget.shape[0])

    @property
    def moving(self) -> list[int]:
        """The modalities attacked in at least one sample (of the ball this one was cut from, if any): the
        modalities of every perturbation list."""
        if self.carried is not None:
            return list(self.carried)
        return [m for m in range(self.attacked.shape[1]) if bool(self.attacked[:, m].any())]

    def rows(self) -> torch.Tensor:
        """(B,) bool: the samples an attack moves (some modality attacked, budget > 0)."""
        return self.attacked.any(dim=1) & (self.budget > 0)

    def subset(self, index: torch.Tensor) -> Ball:
        """The ball of the samples ``index`` (indices or a (B,) bool mask), with this ball's moving modalities."""
        return Ball(self.budget[index], self.attacked[index], self.pixel_ranges, tuple(self.moving))

    def masks(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One 0/1 mask per moving modality, shaped to broadcast against its (B, ...) tensor in ``like``."""
        return [per_sample(self.attacked[:, m].to(x.dtype), x) for m, x in zip(self.moving, like, strict=True)]

    def project(self, clean: Sequence[torch.Tensor], delta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``delta`` (moving modalities) made feasible: scaled onto each sample's ball, then clamped so that
        ``clean + delta`` are valid pixels, and zero on the modalities a sample does not attack.

        Clamping towards a valid clean point only shortens a perturbation, so the result stays in the ball."""
        factor = torch.clamp(self.budget / safe_norm(joint_norm(delta)), max=1.0)
        scaled = [per_sample(factor, d) * d for d in delta]
        ranges = [self.pixel_ranges[m] for m in self.moving]
        return [
            (clamp_pixels(c + d, r) - c) * k
            for c, d, r, k in zip(clean, scaled, ranges, self.masks(clean), strict=True)
        ]

    def on_sphere(self, clean: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``direction`` (moving modalities, masked to the attacked ones) scaled to each sample's budget on the
        joint norm, then clamped to valid pixels: a point on the ball's surface (inside it after clamping)."""
        masked = [d * k for d, k in zip(direction, self.masks(clean), strict=True)]
        factor = self.budget / safe_norm(joint_norm(masked))
        ranges = [self.pixel_ranges[m] for m in self.moving]
        return [
            clamp_pixels(c + per_sample(factor, d) * d, r) - c for c, d, r in zip(clean, masked, ranges, strict=True)
        ]


def rescaled(clean: Sequence[torch.Tensor], adversarial: Sequence[torch.Tensor], radius: torch.Tensor) -> list[torch.Tensor]:
    """``clean`` plus the perturbation ``adversarial - clean`` rescaled to joint l2 norm ``radius`` (B,)
    (a zero perturbation stays zero): the start of an attack continued at another budget."""
    delta = [a - c for c, a in zip(clean, adversarial, strict=True)]
    norm = joint_norm(delta)
    factor = torch.where(norm > 0, radius / safe_norm(norm), torch.zeros_like(norm))
    return [c + per_sample(factor, d) * d for c, d in zip(clean, delta, strict=True)]
