"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), l2, on crmt's joint ball over the attacked modalities.

One run of N iterations (:meth:`APGD._single_run`):

- start at a Gaussian direction scaled onto the ball's surface (or at a given start), clamped to valid
  pixels; the step size starts at eta = 2 x the sample's budget;
- each iteration: z = P(x_k + eta g_k / ||g_k||) and x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)
  (x_k - x_{k-1})) with momentum alpha = 0.75 (no momentum on the first step); P projects onto the
  ball and the pixel range; ||.|| is the joint norm over the attacked modalities;
- checkpoints at w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
  (:func:`checkpoint_intervals`); at each the
  step size of a sample is halved, and it restarts from its best point (highest loss) so far, if the
  loss increased in at most rho = 0.75 of the iterations since the last checkpoint, or if its step
  size was not halved at the last checkpoint and its best loss has not improved since;
- a sample counts as broken as soon as any iterate (inside the ball) is misclassified; broken samples
  leave the run (their outcome can no longer change), which is where most of the cost goes on weak
  models.

Runs repeat for ``restarts`` random starts and, with a targeted loss, for each target class (the
classes of the 2nd, 3rd, ... largest clean logits, as AutoAttack's APGD-T), each run only on the
samples still standing. The loss-increase count uses the loss at the starting point for the first
interval (the reference code compares with an unset entry there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from crmt.robustness.attack import Attack, CleanPass, Problem
from crmt.robustness.attack_losses import TARGETED, AttackLoss, LossName, target_classes
from crmt.robustness.ball import joint_norm, per_sample, safe_norm


def checkpoint_intervals(steps: int) -> list[int]:
    """The iterations between APGD's checkpoints w_j = ceil(p_j N) for a budget of N = ``steps``, with
    p_0 = 0, p_1 = 0.22 and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1 (checkpoints that
    round to the same iteration count once). For N = 100: 22, 19, 16, 13, 10, 7, 6, 6, as the reference code's
    integer schedule, which differs from the paper's for N not a multiple of 100."""
    previous, current = 0.0, 0.22
    checkpoints: list[int] = []
    while current <= 1.0 + 1e-9:
        point = math.ceil(current * steps - 1e-9)
        if point >= 1 and (not checkpoints or point > checkpoints[-1]):
            checkpoints.append(point)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return [b - a for a, b in zip([0, *checkpoints], checkpoints)]


def _where(condition: torch.Tensor, a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.where(per_sample(condition, x), x, y) for x, y in zip(a, b, strict=True)]


class APGD(Attack):
    """Auto-PGD, l2 (see the module docstring).

    Args:
        loss: ``ce`` (APGD-CE), ``dlr`` (APGD-DLR), ``dlr-targeted`` (APGD-T) or ``margin-targeted``
            (the targeted margin, for K <= 3); see :mod:`~crmt.robustness.attack_losses`.
        steps: iterations N per run (100 in AutoAttack).
        restarts: random starts per target class (1 in AutoAttack's standard version).
        targets: target classes of a targeted loss (9 in AutoAttack), capped at K - 1.
        rho: the loss must increase in more than this share of an interval's iterations to keep the step size.
        momentum: alpha.

    Shape: as every :class:`~crmt.robustness.attack.Attack`. ``result.broken``: some iterate of some run
    was misclassified; ``result.adversarial``: that iterate, else the best point of the last run.
    """

    def __init__(
        self, loss: LossName = "ce", steps: int = 100, restarts: int = 1, targets: int = 9, rho: float = 0.75,
        momentum: float = 0.75,
    ) -> None:
        AttackLoss(loss)
        if steps < 1 or restarts < 1 or targets < 1:
            raise ValueError(f"APGD needs steps, restarts and targets >= 1, got {steps}, {restarts}, {targets}")
        if not 0 < rho < 1 or not 0 < momentum <= 1:
            raise ValueError(f"APGD needs rho in (0, 1) and momentum in (0, 1], got {rho} and {momentum}")
        self.loss, self.steps, self.restarts, self.targets = loss, steps, restarts, targets
        self.rho, self.momentum = rho, momentum
        self.name = {"ce": "apgd-ce", "dlr": "apgd-dlr"}.get(loss, "apgd-t")

    def __repr__(self) -> str:
        targets = f", targets={self.targets}" if self.loss in TARGETED else ""
        return f"APGD(loss={self.loss!r}, steps={self.steps}, restarts={self.restarts}{targets})"

    def target_ranks(self, num_classes: int) -> list[int | None]:
        """The logit ranks of the target classes (2 = the runner-up), or ``[None]`` when untargeted."""
        if self.loss not in TARGETED:
            return [None]
        return list(range(2, min(self.targets, num_classes - 1) + 2))

    def run(
        self, problem: Problem, start: list[torch.Tensor] | None, clean: CleanPass | None,
        generator: torch.Generator | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        logits = problem.clean_logits if problem.clean_logits is not None else problem.logits([torch.zeros_like(c) for c in problem.clean])
        loss = AttackLoss(self.loss, logits.shape[1])
        result = [torch.zeros_like(c) for c in problem.clean]
        broken = torch.zeros(problem.size, dtype=torch.bool, device=problem.labels.device)
        first = True
        for rank in self.target_ranks(logits.shape[1]):
            targets = target_classes(logits, rank) if rank is not None else None
            for _ in range(self.restarts):
                standing = (~broken).nonzero().squeeze(1)
                if standing.numel() == 0:
                    return result, broken
                part = problem.subset(standing)
                offset = [s[standing] for s in start] if start is not None and first else None
                delta, wrong = self._single_run(part, loss, targets[standing] if targets is not None else None, offset, generator)
                first = False
                for r, d in zip(result, delta, strict=True):
                    r[standing] = d
                broken[standing] = wrong
        return result, broken

    def _single_run(
        self, problem: Problem, loss: AttackLoss, targets: torch.Tensor | None, start: list[torch.Tensor] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One run: (perturbations, broken) of every sample of ``problem``: the misclassified iterate
        where one was found, else the best point. Samples leave the run when an iterate breaks them."""
        out = [torch.zeros_like(c) for c in problem.clean]
        wrong = torch.zeros(problem.size, dtype=torch.bool, device=problem.labels.device)
        active = torch.arange(problem.size, device=problem.labels.device)
        delta = problem.ball.project(problem.clean, start) if start is not None else problem.random_start(generator)
        evaluation = problem.evaluate(delta, loss, targets)
        state = _RunState.starting(delta, evaluation.values, evaluation.gradients, 2 * problem.ball.budget)
        intervals = checkpoint_intervals(self.steps)
        since, interval = 0, 0
        for iteration in range(self.steps + 1):
            now_wrong = problem.wrong(evaluation.logits)
            if bool(now_wrong.any()):
                for o, d in zip(out, state.delta, strict=True):
                    o[active[now_wrong]] = d[now_wrong]
                wrong[active[now_wrong]] = True
                keep = ~now_wrong
                active = active[keep]
                if active.numel() == 0:
                    return out, wrong
                problem, state = problem.subset(keep), state.keep(keep)
                targets = targets[keep] if targets is not None else None
            if iteration == self.steps:
                break
            alpha = self.momentum if iteration > 0 else 1.0
            clean, delta = problem.clean, state.delta
            norm = safe_norm(joint_norm(state.gradient))
            ascent = problem.ball.project(clean, [d + per_sample(state.step / norm, g) * g for d, g in zip(delta, state.gradient, strict=True)])
            moved = problem.ball.project(clean, [
                d + alpha * (z - d) + (1 - alpha) * (d - p) for d, z, p in zip(delta, ascent, state.previous, strict=True)
            ])
            evaluation = problem.evaluate(moved, loss, targets)
            state.advance(moved, evaluation.values, evaluation.gradients)
            since += 1
            if interval < len(intervals) and since == intervals[interval]:
                state.checkpoint(intervals[interval], self.rho)
                since, interval = 0, interval + 1
        for o, d in zip(out, state.best_delta, strict=True):
            o[active] = d
        return out, wrong


@dataclass
class _RunState:
    """One APGD run over its active samples (the first dimension of every tensor): the current and previous
    perturbations, the gradient at the current one, the loss history since the last checkpoint, the best
    point (highest loss) with its gradient, the step size and what the last checkpoint saw."""

    delta: list[torch.Tensor]
    previous: list[torch.Tensor]
    gradient: list[torch.Tensor]
    history: list[torch.Tensor]
    best_delta: list[torch.Tensor]
    best_gradient: list[torch.Tensor]
    best_values: torch.Tensor
    step: torch.Tensor
    best_at_check: torch.Tensor
    halved_at_check: torch.Tensor

    @classmethod
    def starting(cls, delta: list[torch.Tensor], values: torch.Tensor, gradient: list[torch.Tensor], step: torch.Tensor) -> _RunState:
        halved = torch.ones_like(values, dtype=torch.bool)
        return cls(delta, delta, gradient, [values], delta, gradient, values, step, values, halved)

    def keep(self, rows: torch.Tensor) -> _RunState:
        """The state of the samples ``rows`` (a bool mask)."""
        return _RunState(*(
            [x[rows] for x in value] if isinstance(value, list) else value[rows]
            for value in (getattr(self, f.name) for f in fields(self))
        ))

    def advance(self, delta: list[torch.Tensor], values: torch.Tensor, gradient: list[torch.Tensor]) -> None:
        """Move to the iterate ``delta`` with its loss ``values`` and ``gradient``; keep the best point."""
        self.previous, self.delta, self.gradient = self.delta, delta, gradient
        improved = values > self.best_values
        self.best_delta = _where(improved, delta, self.best_delta)
        self.best_gradient = _where(improved, gradient, self.best_gradient)
        self.best_values = torch.where(improved, values, self.best_values)
        self.history.append(values)

    def checkpoint(self, length: int, rho: float) -> None:
        """Halve the step of the samples whose loss rose in at most ``rho`` of the ``length`` iterations since
        the last checkpoint, or whose step was not halved there and whose best loss has not improved since;
        they continue from their best point."""
        increases = sum((self.history[-j] > self.history[-j - 1]).int() for j in range(1, length + 1))
        halve = (increases <= rho * length) | (~self.halved_at_check & (self.best_at_check >= self.best_values))
        self.halved_at_check, self.best_at_check = halve, self.best_values
        self.step = torch.where(halve, self.step / 2, self.step)
        self.delta = _where(halve, self.best_delta, self.delta)
        self.gradient = _where(halve, self.best_gradient, self.gradient)
        self.history = self.history[-1:]
