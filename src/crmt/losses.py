"""Training objectives of CRMT (method.md §3)."""

from __future__ import annotations

import torch


def margin_regularizer(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Step-1 term L1 = mean_i log( sum_m sum_{k != y_i} exp(s_k^(m)(x_i) - s_{y_i}^(m)(x_i)) ).

    scores: (M, B, K) uni-modal scores; labels: (B,). Returns a scalar. Computed as one
    log-sum-exp over the M * (K - 1) terms per sample, so it is finite for any finite scores.
    """
    num_modalities, batch, num_classes = scores.shape
    if num_classes < 2:
        raise ValueError("margin_regularizer needs at least 2 classes")
    target = scores.gather(2, labels.view(1, batch, 1).expand(num_modalities, batch, 1))
    differences = (scores - target).masked_fill(
        torch.nn.functional.one_hot(labels, num_classes).bool().unsqueeze(0), float("-inf")
    )
    per_sample = torch.logsumexp(differences.permute(1, 0, 2).reshape(batch, -1), dim=1)
    return per_sample.mean()
