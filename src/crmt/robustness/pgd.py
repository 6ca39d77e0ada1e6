"""The paper's attacks: l2 projected gradient descent and the fast gradient method on the cross-entropy.

They follow the paper's evaluation code (baselines.md §10): the objective is the cross-entropy of
the fused logits (its gradient taken without underflow, see
:func:`~crmt.robustness.attack_losses.ascent_direction`); a step moves along the gradient
normalised per sample on the joint norm of the attacked modalities; every step is projected onto
the sample's :class:`~crmt.robustness.ball.Ball`. The paper's protocol is 4 steps of eps / 3 from the
clean input: a weak attack, whose accuracies are upper bounds that a stronger attack lowers (see
:mod:`~crmt.robustness.suite`). Its result is the final point (``broken``: misclassified there).
"""

from __future__ import annotations

import torch

from crmt.robustness.attack import Attack, CleanPass, Problem
from crmt.robustness.attack_losses import AttackLoss
from crmt.robustness.ball import clamp_pixels, joint_norm, per_sample, safe_norm

CROSS_ENTROPY = AttackLoss("ce")


class L2PGD(Attack):
    """l2 projected gradient descent on the fused cross-entropy (Madry et al.; the paper's protocol).

    Args:
        steps: gradient steps (4 in the paper's code).
        step_fraction: size of each normalised step as a fraction of the sample's budget (1/3 in the paper's code).
        random_start: start from a uniformly random point of the ball instead of the clean input.

    Shape:
        ``inputs``: list of M tensors (B, ...); ``labels``: (B,). Returns an
        :class:`~crmt.robustness.attack.AttackResult` with the M adversarial tensors.

    Example::

        result = L2PGD()(model, [visual, audio], labels, Ball.around([visual, audio], 0.5, pixel_ranges=ranges))
    """

    name = "pgd"

    def __init__(self, steps: int = 4, step_fraction: float = 1 / 3, random_start: bool = False) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if step_fraction <= 0:
            raise ValueError(f"step_fraction must be > 0, got {step_fraction}")
        self.steps = steps
        self.step_fraction = step_fraction
        self.random_start = random_start

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.steps}, step_fraction={self.step_fraction:.4g}, "
                f"random_start={self.random_start})")

    def run(
        self, problem: Problem, start: list[torch.Tensor] | None, clean: CleanPass | None,
        generator: torch.Generator | None,
    ) -> tuple[list[torch.Tensor], None]:
        ball, inputs = problem.ball, problem.clean
        keep = ball.masks(inputs)
        step = ball.budget * self.step_fraction
        clamps = [ball.pixel_ranges[m] for m in problem.moving]
        if start is None:
            delta = self._start(inputs, keep, ball.budget, generator)
        else:
            delta = _scaled_into([s * k for s, k in zip(start, keep, strict=True)], ball.budget)
        for index in range(self.steps):
            current = [clamp_pixels(x + d, r) for x, d, r in zip(inputs, delta, clamps, strict=True)]
            if index == 0 and clean is not None and start is None and not self.random_start:
                gradients = [clean.gradients[m].detach() * k for m, k in zip(problem.moving, keep, strict=True)]
            else:
                gradients = problem.evaluate_at(current, CROSS_ENTROPY).gradients
            norm = safe_norm(joint_norm(gradients))
            delta = [(x - c) + per_sample(step / norm, g) * g for x, c, g in zip(current, inputs, gradients, strict=True)]
            delta = ball.project(inputs, delta)
        return delta, None

    def _start(
        self, clean: list[torch.Tensor], keep: list[torch.Tensor], budget: torch.Tensor, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Zero, or a point drawn uniformly from each sample's joint l2 ball of radius ``budget``."""
        if not self.random_start:
            return [torch.zeros_like(x) for x in clean]
        noise = [torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * k for x, k in zip(clean, keep)]
        size = sum(k.flatten() * x[0].numel() for x, k in zip(clean, keep, strict=True)).clamp_min(1)
        uniform = torch.rand(budget.shape, generator=generator, dtype=budget.dtype).to(budget.device)
        scale = budget * uniform ** (1 / size) / safe_norm(joint_norm(noise))
        return [per_sample(scale, n) * n for n in noise]


class FGM(L2PGD):
    """Fast gradient method, l2 (Miyato et al.): one step of the full budget along the normalised gradient."""

    name = "fgm"

    def __init__(self) -> None:
        super().__init__(steps=1, step_fraction=1.0, random_start=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _scaled_into(delta: list[torch.Tensor], budget: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's joint perturbation scaled onto the l2 ball of radius ``budget`` (B,) (no clamping)."""
    factor = torch.clamp(budget / safe_norm(joint_norm(delta)), max=1.0)
    return [per_sample(factor, d) * d for d in delta]
