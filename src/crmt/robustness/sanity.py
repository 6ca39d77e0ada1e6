"""Automatic checks of a robustness evaluation (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; AutoAttack's flags), each raised or not, with its counts, printed with the result.

- ``randomness``: two clean forward passes of the same samples give different predictions or logits
  (normalised logits differ by more than 1e-4 in l2): a randomised model needs expectation over its
  randomness, which the suite does not take.
- ``zero_gradients``: correctly classified samples whose input gradient of the cross-entropy (taken
  without underflow) is exactly zero at the clean point: gradient attacks cannot move them.
- ``weaker_than_paper``: samples the paper's FGM or PGD broke but the suite left standing.
- ``black_box``: samples only the gradient-free attack broke, every gradient attack having left them
  standing: the gradients mislead the gradient attacks (masking).
- ``large_budget``: the suite's gradient attacks at a budget where an adversarial example provably
  exists, the joint distance from each correctly classified sample to the nearest correctly classified
  sample of another class among the checked ones (that sample itself lies in the ball and in the pixel
  range), leave more than a tolerance of the samples standing. Multi-modal scope only: an attack on one
  modality can leave a prediction that the other modality holds, whatever its budget.
- ``not_converged``: the suite at twice its steps, starts and queries (other random draws) lowers the
  accuracy of the checked samples by more than a tolerance.

The first two and the next two are counted on every evaluated sample; the last two on the first
``sanity_samples`` samples of each rank (they cost attacks of their own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from crmt.models.protocol import MultiModalModel
from crmt.robustness.modes import eval_mode

CHECK_TITLES: dict[str, str] = {
    "randomness": "two clean forward passes differ (a randomised model)",
    "zero_gradients": "zero input gradients at correctly classified samples",
    "weaker_than_paper": "the suite left standing samples that the paper's FGM or PGD broke",
    "black_box": "the gradient-free attack broke samples that every gradient attack left standing",
    "large_budget": "samples standing at a budget where an adversarial example provably exists",
    "not_converged": "twice the suite's steps, starts and queries still lowers the accuracy",
}
"""Every check, in the order reports list them, and what it means when raised."""


@dataclass(frozen=True)
class SanityCheck:
    """One check: ``count`` offending samples (or sample-scope pairs) of ``checked``; ``raised`` when
    ``count`` exceeds ``tolerance`` x ``checked`` (0: any offending sample raises it); ``note`` says why
    a check did not run."""

    key: str
    count: int
    checked: int
    tolerance: float = 0.0
    note: str = ""

    def __post_init__(self) -> None:
        if self.key not in CHECK_TITLES:
            raise ValueError(f"unknown sanity check {self.key!r}; expected one of {list(CHECK_TITLES)}")

    @property
    def raised(self) -> bool:
        return self.checked > 0 and self.count > self.tolerance * self.checked

    @property
    def title(self) -> str:
        return CHECK_TITLES[self.key]

    def line(self) -> str:
        """One report line: ``FLAG`` or ``ok``, the check and its counts."""
        if self.checked == 0:
            return f"not run: {self.title}" + (f" ({self.note})" if self.note else "")
        state = "**FLAG**" if self.raised else "ok"
        tolerance = f", tolerance {self.tolerance:.0%}" if self.tolerance else ""
        return f"{state}: {self.title}: {self.count} of {self.checked}{tolerance}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict:
        return {"key": self.key, "raised": self.raised, "count": self.count, "checked": self.checked,
                "tolerance": self.tolerance, "note": self.note}

    @classmethod
    def from_json(cls, data: Mapping) -> SanityCheck:
        return cls(data["key"], data["count"], data["checked"], data["tolerance"], data.get("note", ""))


def passes_differ(model: MultiModalModel, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B,) bool: two clean forward passes in evaluation mode give another prediction or normalised logits
    further apart than 1e-4 in l2."""
    with torch.inference_mode(False), torch.no_grad(), eval_mode(model):
        first, second = (model([x.clone() for x in inputs]).logits for _ in range(2))
    unit = [z / z.norm(dim=1, keepdim=True).clamp_min(1e-10) for z in (first, second)]
    return (first.argmax(dim=1) != second.argmax(dim=1)) | ((unit[0] - unit[1]).norm(dim=1) > 1e-4)


def zero_gradients(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B,) bool: every modality's input gradient of the sample is exactly zero."""
    return torch.stack([g.flatten(1).abs().sum(dim=1) == 0 for g in gradients]).all(dim=0)


def provable_budgets(inputs: Sequence[torch.Tensor], labels: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """(B,) the joint l2 distance from each correctly classified sample to the nearest correctly classified
    sample of another class (inf where there is none or the sample is misclassified): within that budget
    an adversarial example exists, the other sample itself."""
    flat = torch.cat([x.flatten(1) for x in inputs], dim=1).double()
    distances = torch.cdist(flat, flat)
    other = (labels[:, None] != labels[None, :]) & correct[None, :] & correct[:, None]
    budgets = distances.masked_fill(~other, float("inf")).min(dim=1).values
    return budgets.to(inputs[0].dtype)
