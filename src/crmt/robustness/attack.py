"""What every attack shares: one call, the model as a function of the attacked inputs, and the clean pass.

Every attack of the project (:mod:`~crmt.robustness.pgd`, :mod:`~crmt.robustness.apgd`,
:mod:`~crmt.robustness.square`) is called the same way::

    result = attack(model, inputs, labels, Ball.around(inputs, 0.5, pixel_ranges=ranges))
    result.adversarial  # one (B, ...) tensor per modality
    result.broken       # (B,) bool: misclassified at some point the attack evaluated inside the ball

The :class:`~crmt.robustness.ball.Ball` declares each sample's budget and attacked modalities, so
attacks on several scopes, or at per-sample budgets, run as one batch; samples with nothing to
attack are returned unchanged. An attack runs the model in evaluation mode (restored afterwards),
differentiates with respect to the inputs only (parameters and their ``.grad`` are untouched),
works inside Lightning's inference-mode loops, never modifies the inputs in place, and returns the
inputs of modalities no sample attacks as the very same tensors.

Optional, per call: ``start``, inputs to continue from (their perturbation projected into the
ball); ``clean``, the :class:`CleanPass` of these inputs when already known (it saves encoding the
unattacked modalities again and, for the paper's PGD, the first backward pass); ``generator`` for
random starts and searches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from crmt.models.protocol import MultiModalModel
from crmt.robustness.attack_losses import AttackLoss, ascent_direction
from crmt.robustness.ball import Ball
from crmt.robustness.modes import eval_mode, input_gradients


class PartialModel:
    """The model as a function of the attacked inputs, the others held at their clean features.

    ``attacked`` (B, M) bool marks the modalities each sample's attack moves; ``features`` holds, per
    modality, the clean features (B, D_m) of the samples that do not move it (``None`` when every sample
    does). A modality attacked in no sample is not encoded again, one attacked in some samples only is
    encoded on those rows: each attack step runs only the encoders it needs (see :meth:`at`).
    """

    def __init__(self, model: MultiModalModel, attacked: torch.Tensor, features: Sequence[torch.Tensor | None]) -> None:
        self.model, self.attacked, self.features = model, attacked, list(features)

    @classmethod
    def at(
        cls, model: MultiModalModel, inputs: Sequence[torch.Tensor], attacked: torch.Tensor,
        features: Sequence[torch.Tensor] | None = None,
    ) -> PartialModel:
        """The model around the clean ``inputs``: the unattacked features are taken from ``features`` (every
        modality's clean features) or computed once, without gradients."""
        kept: list[torch.Tensor | None] = []
        with torch.no_grad():
            for m, x in enumerate(inputs):
                rows = attacked[:, m]
                if bool(rows.all()):
                    kept.append(None)
                elif features is not None:
                    kept.append(features[m])
                else:
                    encoded = model.encode_modality(m, x[~rows])
                    full = encoded.new_zeros((x.shape[0], *encoded.shape[1:]))
                    full[~rows] = encoded
                    kept.append(full)
        return cls(model, attacked, kept)

    def subset(self, index: torch.Tensor) -> PartialModel:
        """The same function on the samples ``index`` (indices or a bool mask), without encoding anything."""
        return PartialModel(self.model, self.attacked[index], [None if f is None else f[index] for f in self.features])

    def logits(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits (B, K) at ``inputs`` (one tensor per modality; only attacked rows are read)."""
        features = []
        for m, (x, clean) in enumerate(zip(inputs, self.features, strict=True)):
            rows = self.attacked[:, m]
            if clean is None:
                features.append(self.model.encode_modality(m, x))
            elif not bool(rows.any()):
                features.append(clean)
            else:
                mixed = clean.clone()
                mixed[rows] = self.model.encode_modality(m, x[rows])
                features.append(mixed)
        return self.model.fuse(features).logits


class CleanPass(NamedTuple):
    """One forward and backward pass at the clean inputs: ``logits`` (B, K), the cross-entropy's
    ascent direction w.r.t. every input (``gradients``) and every modality's ``features``."""

    logits: torch.Tensor
    gradients: list[torch.Tensor]
    features: list[torch.Tensor]

    def subset(self, index: torch.Tensor) -> CleanPass:
        """The clean pass of the samples ``index`` (indices or a bool mask)."""
        return CleanPass(self.logits[index], [g[index] for g in self.gradients], [f[index] for f in self.features])


def clean_pass(model: MultiModalModel, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> CleanPass:
    """Logits, input gradients and features at the clean inputs, from one forward and one backward.

    Each sample's gradient is exact up to a positive factor (see
    :func:`~crmt.robustness.attack_losses.ascent_direction`), which is all a normalised attack step uses.
    """
    with eval_mode(model), input_gradients():
        x = [t.detach().clone().requires_grad_(True) for t in inputs]
        features = [model.encode_modality(m, xm) for m, xm in enumerate(x)]
        logits = model.fuse(features).logits
        surrogate = (logits * ascent_direction(logits, labels.clone())).sum()
        gradients = [g.detach() for g in torch.autograd.grad(surrogate, x)]
    return CleanPass(logits.detach(), gradients, [f.detach() for f in features])


class Evaluation(NamedTuple):
    """An attack objective at one point: ``values`` (B,), input ``gradients`` (one per moving
    modality, each sample's up to a positive factor) and the ``logits`` (B, K)."""

    values: torch.Tensor
    gradients: list[torch.Tensor]
    logits: torch.Tensor


class Problem:
    """What an attack algorithm works on: the moving modalities' clean inputs and perturbations.

    Attributes:
        inputs: every modality's clean input (B, ...), not to be modified.
        labels: (B,).
        ball: the threat; ``moving`` its moving modalities and ``clean`` their clean inputs.
        partial: the model as a function of the moving modalities.
        clean_logits: (B, K) at the clean inputs, when known.
    """

    def __init__(
        self, inputs: Sequence[torch.Tensor], labels: torch.Tensor, ball: Ball, partial: PartialModel,
        clean_logits: torch.Tensor | None = None,
    ) -> None:
        self.inputs, self.labels, self.ball, self.partial, self.clean_logits = list(inputs), labels, ball, partial, clean_logits
        self.moving = ball.moving
        self.clean = [self.inputs[m] for m in self.moving]

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Problem:
        """The problem of the samples ``index`` (indices or a bool mask), with the same moving modalities."""
        logits = None if self.clean_logits is None else self.clean_logits[index]
        return Problem([x[index] for x in self.inputs], self.labels[index], self.ball.subset(index),
                       self.partial.subset(index), logits)

    def logits(self, delta: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, K) at perturbation ``delta``, without gradients."""
        return self.logits_at([c + d for c, d in zip(self.clean, delta, strict=True)])

    def logits_at(self, points: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, K), without gradients, at ``points`` (the moving modalities' inputs)."""
        with torch.no_grad():
            return self.partial.logits(self._inputs_at(points))

    def evaluate(self, delta: Sequence[torch.Tensor], loss: AttackLoss, targets: torch.Tensor | None = None) -> Evaluation:
        """``loss`` at ``clean + delta`` and its input gradients (one forward, one backward)."""
        return self.evaluate_at([c + d for c, d in zip(self.clean, delta, strict=True)], loss, targets)

    def evaluate_at(self, points: Sequence[torch.Tensor], loss: AttackLoss, targets: torch.Tensor | None = None) -> Evaluation:
        """``loss`` at ``points`` (the moving modalities' inputs) and its input gradients."""
        points = [x.detach().requires_grad_(True) for x in points]
        logits = self.partial.logits(self._inputs_at(points))
        surrogate = (logits * loss.ascent(logits, self.labels, targets)).sum()
        gradients = torch.autograd.grad(surrogate, points, allow_unused=True)  # a modality no sample here attacks
        gradients = [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(points, gradients, strict=True)]
        logits = logits.detach()
        return Evaluation(loss.values(logits, self.labels, targets), gradients, logits)

    def _inputs_at(self, points: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every modality's input: ``points`` for the moving modalities, the clean inputs for the others."""
        full = list(self.inputs)
        for m, x in zip(self.moving, points, strict=True):
            full[m] = x
        return full

    def random_start(self, generator: torch.Generator | None) -> list[torch.Tensor]:
        """A Gaussian direction on each sample's attacked modalities scaled onto its ball's surface
        (then clamped to valid pixels), as Croce & Hein's l2 APGD starts."""
        noise = [torch.randn(c.shape, generator=generator, dtype=c.dtype).to(c.device) for c in self.clean]
        return self.ball.on_sphere(self.clean, noise)

    def wrong(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: misclassified."""
        return logits.argmax(dim=1) != self.labels


class AttackResult:
    """``adversarial``: one (B, ...) tensor per modality (the clean inputs where a sample was not attacked;
    the very input tensors for modalities no sample attacks); ``broken`` (B,) bool: a point inside
    the ball that the attack evaluated is misclassified (computed on first use when the attack did
    not evaluate its final point itself)."""

    def __init__(self, adversarial: list[torch.Tensor], broken: torch.Tensor | Callable[[], torch.Tensor]) -> None:
        self.adversarial = adversarial
        self._broken = broken

    @property
    def broken(self) -> torch.Tensor:
        if callable(self._broken):
            self._broken = self._broken()
        return self._broken


class Attack(ABC):
    """The common call of every attack (see the module docstring). Subclasses implement :meth:`run`,
    the algorithm on the attacked samples, and :meth:`__repr__` with their hyperparameters."""

    name: str = "attack"

    def __call__(
        self,
        model: MultiModalModel,
        inputs: Sequence[torch.Tensor],
        labels: torch.Tensor,
        ball: Ball,
        *,
        start: Sequence[torch.Tensor] | None = None,
        clean: CleanPass | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        rows = ball.rows()
        everyone = bool(rows.all())
        with eval_mode(model), input_gradients():
            labels = labels.clone()
            moving = ball.moving
            copies = [x.detach().clone() if m in moving else x.detach() for m, x in enumerate(inputs)]
            partial = PartialModel.at(model, copies, ball.attacked, clean.features if clean else None)
            problem = Problem(copies, labels, ball, partial, clean.logits if clean else None)
            if not everyone:
                problem = problem.subset(rows)
                clean = clean.subset(rows) if clean is not None else None
                start = [s[rows] for s in start] if start is not None else None
            delta: list[torch.Tensor] = [torch.zeros_like(c) for c in problem.clean]
            broken: torch.Tensor | None = labels.new_zeros(0, dtype=torch.bool)
            if problem.size:
                offset = None
                if start is not None:
                    offset = [start[m].detach() - c for m, c in zip(problem.moving, problem.clean, strict=True)]
                delta, broken = self.run(problem, offset, clean, generator)
                delta = [d.detach() for d in delta]
            adversarial = list(inputs)
            for m, c, d in zip(problem.moving, problem.clean, delta, strict=True):
                if everyone:
                    adversarial[m] = (c + d).detach()
                else:
                    moved = inputs[m].detach().clone()
                    moved[rows] = c + d
                    adversarial[m] = moved
        return AttackResult(adversarial, self._scatter(broken, problem, delta, rows, everyone, model))

    @staticmethod
    def _scatter(
        broken: torch.Tensor | None, problem: Problem, delta: list[torch.Tensor], rows: torch.Tensor, everyone: bool,
        model: MultiModalModel,
    ) -> torch.Tensor | Callable[[], torch.Tensor]:
        """The (B,) broken flags, or a function computing them at the final points on first use."""

        def full(values: torch.Tensor) -> torch.Tensor:
            if everyone:
                return values
            result = torch.zeros_like(rows)
            result[rows] = values
            return result

        if broken is not None:
            return full(broken)

        def at_final_points() -> torch.Tensor:
            with torch.inference_mode(False), eval_mode(model):
                return full(problem.wrong(problem.logits(delta)))

        return at_final_points

    @abstractmethod
    def run(
        self, problem: Problem, start: list[torch.Tensor] | None, clean: CleanPass | None,
        generator: torch.Generator | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The perturbations (moving modalities) of ``problem``'s samples, feasible for its ball, and
        their (B,) broken flags (``None``: the attack did not evaluate its final points). ``start``:
        the perturbations to continue from (moving modalities, not yet projected), or ``None``."""


def missing_modality(inputs: Sequence[torch.Tensor], modality: int, fill: float = 0.0) -> list[torch.Tensor]:
    """The inputs with modality ``modality`` replaced by the constant ``fill`` (0: the normalised mean)."""
    result = list(inputs)
    result[modality] = torch.full_like(inputs[modality], fill)
    return result


def predict(model: MultiModalModel, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Predicted classes (B,) in evaluation mode, without gradients."""
    with torch.inference_mode(False), torch.no_grad(), eval_mode(model):
        return model([x.clone() for x in inputs]).logits.argmax(dim=1)
