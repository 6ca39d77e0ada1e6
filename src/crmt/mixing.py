"""Multi-modal input mixup (baselines.md §7): one lambda and one permutation shared by every modality."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MixedBatch:
    """inputs: the mixed inputs, one (B, ...) tensor per modality; labels_a: y (B,);
    labels_b: y[permutation] (B,); lam: the mixing weight of (inputs, labels_a); permutation: (B,)."""

    inputs: list[torch.Tensor]
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float
    permutation: torch.Tensor

    def cross_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b) for logits (B, K)."""
        return self.lam * F.cross_entropy(logits, self.labels_a) + (1 - self.lam) * F.cross_entropy(
            logits, self.labels_b
        )


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """lam ~ Beta(alpha, alpha), drawn from ``generator`` (a CPU generator) without touching the global RNG."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        concentration = torch.tensor(float(alpha), dtype=torch.float64)
        return float(torch.distributions.Beta(concentration, concentration).sample())


def mix_inputs(
    inputs: Sequence[torch.Tensor], labels: torch.Tensor, alpha: float, generator: torch.Generator
) -> MixedBatch:
    """x~^(m) = lam * x^(m) + (1 - lam) * x^(m)[pi] for every modality m, with one lam ~ Beta(alpha, alpha)
    and one permutation pi of the batch, both drawn from the CPU ``generator``.

    inputs: one (B, ...) tensor per modality; labels: (B,).
    """
    batch = labels.shape[0]
    if any(x.shape[0] != batch for x in inputs):
        raise ValueError(f"every input needs the labels' batch size {batch}, got {[x.shape[0] for x in inputs]}")
    lam = sample_beta(alpha, generator)
    permutation = torch.randperm(batch, generator=generator).to(labels.device)
    mixed = [lam * x + (1 - lam) * x[permutation] for x in inputs]
    return MixedBatch(inputs=mixed, labels_a=labels, labels_b=labels[permutation], lam=lam, permutation=permutation)
