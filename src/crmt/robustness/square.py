"""The Square attack, l2 (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020): a score-based random
search that uses no gradient, the check of the gradient attacks for gradient masking.

It lowers the margin z_y - max_{i != y} z_i of the fused logits. Each iteration proposes, for every
sample still classified correctly, a perturbation that differs from its current one in two square
windows of one modality: the mass of the second window moves into the first, plus a new
pseudo-Gaussian pattern eta(s) with a random sign per channel, rescaled so that the joint norm stays
at the budget (the reference code's l2 update, with the joint norm over the attacked modalities in
place of the image norm). The proposal is kept if it lowers the margin. The window's side s shrinks
with the iteration on the reference schedule of p (the share of the modality's features a window
covers), rescaled to the query budget.

Multi-modal inputs: a modality of shape (C, ..., H, W) is searched as C x ... channels of H x W
planes (frames: 3 x T channels of H x W pixels; a filterbank: 1 channel of time x frequency); each
iteration updates, for each sample, one of its attacked modalities, drawn uniformly. The start is the
reference code's grid of eta blocks with random signs on every attacked modality, scaled to the joint
budget. Pixels are clamped as in every attack.
"""

from __future__ import annotations

import math

import torch

from crmt.robustness.attack import Attack, CleanPass, Problem
from crmt.robustness.attack_losses import margin
from crmt.robustness.ball import PixelRange, per_sample


def p_schedule(iteration: int, queries: int, p_init: float) -> float:
    """The reference code's share p of the features a window covers at ``iteration``, on the schedule of
    10,000 iterations rescaled to ``queries``."""
    step = int(iteration / queries * 10_000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if step <= bound:
            return p_init / divisor
    return p_init / 512


def _rectangles(height: int, width: int) -> torch.Tensor:
    """Nested rectangles of weight 1 / (k + 1)^2 around the centre, l2-normalised: (height, width)."""
    delta = torch.zeros(height, width)
    centre_h, centre_w = height // 2, width // 2
    for k in range(max(centre_h + 1, centre_w + 1)):
        delta[max(centre_h - k, 0): min(centre_h + k + 1, height), max(centre_w - k, 0): min(centre_w + k + 1, width)] += 1.0 / (k + 1) ** 2
    return delta / delta.norm()


def eta(side: int, generator: torch.Generator | None) -> torch.Tensor:
    """The pseudo-Gaussian pattern of a window (side, side): rectangles of opposite sign in its two halves,
    l2-normalised, transposed with probability 1/2."""
    if side == 1:
        return torch.ones(1, 1)
    delta = torch.cat([_rectangles(side // 2, side), -_rectangles(side - side // 2, side)])
    delta = delta / delta.norm()
    return delta.T if bool(torch.rand(1, generator=generator) > 0.5) else delta


def _planes(x: torch.Tensor) -> torch.Tensor:
    """(B, C, ..., H, W) viewed as (B, channels, H, W)."""
    if x.ndim < 4:
        raise ValueError(f"the Square attack searches inputs of shape (B, C, ..., H, W), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=like.dtype, device=like.device)


def _position(limit: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(0, limit + 1, (1,), generator=generator))


class SquareL2(Attack):
    """Square attack, l2 (see the module docstring).

    Args:
        queries: iterations, one model evaluation per standing sample each (5000 in AutoAttack).
        p_init: the initial share of a modality's features that a window covers (0.8).
        restarts: runs from new random starts, each on the samples still standing.

    ``result.broken``: some evaluated point was misclassified; ``result.adversarial``: that point, else
    the lowest-margin point found.
    """

    name = "square"

    def __init__(self, queries: int = 5000, p_init: float = 0.8, restarts: int = 1) -> None:
        if queries < 1 or restarts < 1:
            raise ValueError(f"SquareL2 needs queries and restarts >= 1, got {queries} and {restarts}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries, self.p_init, self.restarts = queries, p_init, restarts

    def __repr__(self) -> str:
        return f"SquareL2(queries={self.queries}, p_init={self.p_init}, restarts={self.restarts})"

    def run(
        self, problem: Problem, start: list[torch.Tensor] | None, clean: CleanPass | None,
        generator: torch.Generator | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        result = [torch.zeros_like(c) for c in problem.clean]
        broken = torch.zeros(problem.size, dtype=torch.bool, device=problem.labels.device)
        for _ in range(self.restarts):
            standing = (~broken).nonzero().squeeze(1)
            if standing.numel() == 0:
                break
            delta, wrong = self._single_run(problem.subset(standing), generator)
            for r, d in zip(result, delta, strict=True):
                r[standing] = d
            broken[standing] = wrong
        return result, broken

    def _initial(self, problem: Problem, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The reference start: eta blocks of side min(H, W) // 5 tiled over each plane, a random sign per
        block and channel, on every attacked modality, scaled jointly onto the ball."""
        pattern = []
        for c in problem.clean:
            planes = _planes(c)
            rows, channels, height, width = planes.shape
            side = max(min(height, width) // 5, 1)
            block = eta(side, generator).to(dtype=c.dtype, device=c.device)
            delta = torch.zeros_like(planes)
            top = (height - side * (height // side)) // 2
            for i in range(height // side):
                left = (width - side * (width // side)) // 2
                for j in range(width // side):
                    h, w = top + i * side, left + j * side
                    delta[:, :, h:h + side, w:w + side] += block * _signs((rows, channels, 1, 1), generator, c)
            pattern.append(delta.reshape(c.shape))
        return problem.ball.on_sphere(problem.clean, pattern)

    def _single_run(self, problem: Problem, generator: torch.Generator | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One run on every sample of ``problem``: (perturbations, broken).

        The points clean + delta of the standing samples are kept as planes and a proposal changes only its
        two windows, so an iteration costs one copy of the standing points, the window arithmetic and one
        forward pass. The update keeps each sample's joint norm at its budget by construction (the reference
        code rescales the whole perturbation afterwards, which then changes nothing but rounding); norm that
        pixel clamping removes is given back to the next window through ``room``."""
        delta = self._initial(problem, generator)
        points = [_planes(c + d) for c, d in zip(problem.clean, delta, strict=True)]
        clean = [_planes(c) for c in problem.clean]
        squares = torch.stack([d.flatten(1).pow(2).sum(dim=1) for d in delta])
        logits = problem.logits(delta)
        best = margin(logits, problem.labels)
        wrong = problem.wrong(logits)
        attacked = problem.ball.attacked[:, problem.moving].float().cpu()
        bounds = [_plane_bounds(problem.ball.pixel_ranges[m], c) for m, c in zip(problem.moving, problem.clean, strict=True)]
        standing = None
        for iteration in range(self.queries):
            if standing is None:
                standing = (~wrong).nonzero().squeeze(1)
                if standing.numel() == 0:
                    break
                part = problem.subset(standing)
                current, base, current_squares = [x[standing] for x in points], [c[standing] for c in clean], squares[:, standing]
            choice = torch.multinomial(attacked[standing.cpu()], 1, generator=generator).squeeze(1).to(standing.device)
            p = p_schedule(iteration, self.queries, self.p_init)
            proposal, proposal_squares = [x.clone() for x in current], current_squares.clone()
            room = torch.clamp(part.ball.budget.pow(2) - current_squares.sum(dim=0), min=0.0)
            for j in range(len(proposal)):
                rows = (choice == j).nonzero().squeeze(1)
                if rows.numel():
                    proposal_squares[j, rows] += self._windows(proposal[j], base[j], rows, room[rows], p, bounds[j], generator)
            logits = part.logits_at([x.reshape(c.shape) for x, c in zip(proposal, part.clean, strict=True)])
            value = margin(logits, part.labels)
            improved = (value < best[standing]).nonzero().squeeze(1)
            if improved.numel() == 0:
                continue
            for x, y in zip(current, proposal, strict=True):
                x[improved] = y[improved]
            current_squares[:, improved] = proposal_squares[:, improved]
            best[standing[improved]] = value[improved]
            newly = improved[part.wrong(logits)[improved]]
            if newly.numel():
                for x, y in zip(points, current, strict=True):
                    x[standing] = y
                squares[:, standing] = current_squares
                wrong[standing[newly]] = True
                standing = None
        if standing is not None:
            for x, y in zip(points, current, strict=True):
                x[standing] = y
        return [(x - c).reshape(original.shape) for x, c, original in zip(points, clean, problem.clean, strict=True)], wrong

    def _windows(
        self, points: torch.Tensor, clean: torch.Tensor, rows: torch.Tensor, room: torch.Tensor, p: float,
        bounds: tuple[torch.Tensor, torch.Tensor] | None, generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The l2 square update, in place, of the ``rows`` of one modality's points (n, channels, H, W) around
        ``clean``: window 2's perturbation and a new eta pattern with random signs per channel go into window 1,
        sized so that the sample's joint squared norm grows by ``room`` (its budget^2 minus its current squared
        norm); pixels are clamped to ``bounds``. Returns the change of the rows' squared norm."""
        _, channels, height, width = points.shape
        side = max(int(round(math.sqrt(p * height * width))), 3)
        side = min(side + 1 if side % 2 == 0 else side, height, width)
        h1, w1 = _position(height - side, generator), _position(width - side, generator)
        h2, w2 = _position(height - side, generator), _position(width - side, generator)
        first = (rows, slice(None), slice(h1, h1 + side), slice(w1, w1 + side))
        second = (rows, slice(None), slice(h2, h2 + side), slice(w2, w2 + side))
        old_first, old_second = points[first] - clean[first], points[second] - clean[second]
        overlap = _overlap((h1, w1), (h2, w2), side)
        first_sq = old_first.pow(2).sum(dim=(-2, -1), keepdim=True)
        union_sq = first_sq + old_second.pow(2).sum(dim=(-2, -1), keepdim=True)
        if overlap is not None:
            union_sq = union_sq - old_first[(slice(None), slice(None), *overlap)].pow(2).sum(dim=(-2, -1), keepdim=True)
        new = eta(side, generator).to(dtype=points.dtype, device=points.device) * _signs((len(rows), channels, 1, 1), generator, points)
        new = new + old_first / (1e-12 + first_sq.sqrt())
        size = torch.sqrt(per_sample(room, new) / channels + union_sq)
        new = new / (1e-12 + new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()) * size
        moved = clean[first] + new
        if bounds is not None:
            moved = torch.clamp(moved, *bounds)
        points[second] = clean[second]
        points[first] = moved
        return (moved - clean[first]).pow(2).flatten(1).sum(dim=1) - union_sq.flatten(1).sum(dim=1)


def _overlap(first: tuple[int, int], second: tuple[int, int], side: int) -> tuple[slice, slice] | None:
    """The intersection of two side x side windows at ``first`` and ``second`` (top, left), as slices into the
    first window, or ``None`` when they do not overlap."""
    top, left = max(first[0], second[0]), max(first[1], second[1])
    bottom, right = min(first[0], second[0]) + side, min(first[1], second[1]) + side
    if top >= bottom or left >= right:
        return None
    return slice(top - first[0], bottom - first[0]), slice(left - first[1], right - first[1])


def _plane_bounds(pixel_range: PixelRange | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The lower and upper bounds (1, channels, 1, 1) of the planes of ``x`` (B, C, ..., H, W) in the pixel range."""
    if pixel_range is None:
        return None
    repeat = _planes(x).shape[1] // len(pixel_range.mean)
    mean = torch.tensor(pixel_range.mean, dtype=x.dtype, device=x.device).repeat_interleave(repeat)
    std = torch.tensor(pixel_range.std, dtype=x.dtype, device=x.device).repeat_interleave(repeat)
    return (-mean / std).view(1, -1, 1, 1), ((1 - mean) / std).view(1, -1, 1, 1)
