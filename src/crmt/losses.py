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


def mixup_margin_regularizer(
    scores: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float
) -> torch.Tensor:
    """CRMT-Mix step-1 term (method.md §3 Variants; the paper's form, not the code's of baselines.md §9.6):

    mean_i log( sum_m sum_{k not in {y_a,i, y_b,i}} exp(s_k^(m)(x_i))
                / exp(lam s_{y_a,i}^(m) + (1 - lam) s_{y_b,i}^(m)) ).

    scores: (M, B, K) uni-modal scores of the mixed inputs; labels_a, labels_b: (B,); lam in [0, 1].
    Where y_a == y_b only that class is excluded. Computed as one log-sum-exp per sample, so
    it is finite for any finite scores. Needs K >= 3, so that some class is left when y_a != y_b.
    """
    num_modalities, batch, num_classes = scores.shape
    if num_classes < 3:
        raise ValueError("mixup_margin_regularizer needs at least 3 classes (two mixed labels and another)")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")

    def label_scores(labels: torch.Tensor) -> torch.Tensor:
        return scores.gather(2, labels.view(1, batch, 1).expand(num_modalities, batch, 1))

    target = lam * label_scores(labels_a) + (1 - lam) * label_scores(labels_b)
    one_hot = torch.nn.functional.one_hot
    excluded = one_hot(labels_a, num_classes).bool() | one_hot(labels_b, num_classes).bool()
    differences = (scores - target).masked_fill(excluded.unsqueeze(0), float("-inf"))
    per_sample = torch.logsumexp(differences.permute(1, 0, 2).reshape(batch, -1), dim=1)
    return per_sample.mean()
