"""The objectives attacks maximise, on the fused logits (B, K).

Each :class:`AttackLoss` gives per-sample ``values`` (B,) (higher: closer to, or further past, a
misclassification) and an ``ascent`` direction (B, K): d values / d logits up to a positive factor
per sample, which is all a normalised attack step uses. Attacks differentiate
``(logits * ascent).sum()`` with respect to the inputs, one backward pass.

- ``ce``: the cross-entropy, the paper's protocol (:func:`ascent_direction` keeps its gradient
  from underflowing at confident samples).
- ``dlr``: the difference of logits ratio of Croce & Hein (ICML 2020),
  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12) with pi sorting the logits in decreasing
  order; invariant to shifting and to scaling the logits, so a head that rescales its logits (CRMT's
  a^(m)) cannot weaken it. Needs K >= 3.
- ``dlr-targeted``: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) towards a target class t;
  needs K >= 4.
- ``margin-targeted``: -(z_y - z_t), Carlini and Wagner's margin towards t, for K <= 3 where the
  targeted DLR has no denominator (not scale-invariant, but its gradient never vanishes).

:func:`margin` (z_y - max_{i != y} z_i, negative iff misclassified) is what the Square attack lowers.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

LossName = Literal["ce", "dlr", "dlr-targeted", "margin-targeted"]
TARGETED: frozenset[str] = frozenset({"dlr-targeted", "margin-targeted"})
MIN_CLASSES: dict[str, int] = {"ce": 2, "dlr": 3, "dlr-targeted": 4, "margin-targeted": 2}
"""The fewest classes each loss is defined for."""


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


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i: (B,), negative exactly where the sample is misclassified (ties aside)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.max(dim=1).values


def target_classes(logits: torch.Tensor, rank: int) -> torch.Tensor:
    """The class of each sample's ``rank``-th largest logit (rank 1: the top class): (B,)."""
    return logits.argsort(dim=1, descending=True)[:, rank - 1]


class AttackLoss:
    """One of :data:`LossName`; ``targets`` (B,) for the targeted losses.

    Args:
        name: the loss.
        num_classes: K, checked against the loss's :data:`MIN_CLASSES` when given.
    """

    def __init__(self, name: LossName, num_classes: int | None = None) -> None:
        if name not in get_args(LossName):
            raise ValueError(f"unknown attack loss {name!r}; expected one of {get_args(LossName)}")
        if num_classes is not None and num_classes < MIN_CLASSES[name]:
            raise ValueError(f"the {name} loss needs at least {MIN_CLASSES[name]} classes, got {num_classes}")
        self.name = name
        self.num_classes = num_classes

    @property
    def targeted(self) -> bool:
        return self.name in TARGETED

    def values(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of each sample (B,), computed in float64 (a zero-gap denominator is kept finite by 1e-12)."""
        z = logits.double()
        if self.name == "ce":
            return torch.logsumexp(z, dim=1) - z.gather(1, labels[:, None]).squeeze(1)
        ordered = z.sort(dim=1, descending=True).values
        if self.name == "dlr":
            return -margin(z, labels) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
        if targets is None:
            raise ValueError(f"the {self.name} loss needs target classes")
        gap = z.gather(1, labels[:, None]).squeeze(1) - z.gather(1, targets[:, None]).squeeze(1)
        if self.name == "dlr-targeted":
            return -gap / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)
        return -gap

    def ascent(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """d values / d logits (B, K), up to a positive factor per sample (exact, but for ``ce``)."""
        if self.name == "ce":
            return ascent_direction(logits, labels)
        with torch.enable_grad():
            z = logits.detach().double().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.values(z, labels, targets).sum(), z)
        return gradient.to(logits.dtype)
