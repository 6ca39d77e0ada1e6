"""The step-1 margin regulariser L1."""

import math

import torch

from crmt.losses import margin_regularizer


def direct_margin(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The formula of method.md §3 with raw exponentials, one sample at a time."""
    values = []
    for i, y in enumerate(labels.tolist()):
        total = sum(
            math.exp(scores[m, i, k]) / math.exp(scores[m, i, y])
            for m in range(scores.shape[0])
            for k in range(scores.shape[2])
            if k != y
        )
        values.append(math.log(total))
    return torch.tensor(sum(values) / len(values), dtype=torch.float64)


def test_margin_matches_direct_formula_on_small_logits():
    torch.manual_seed(0)
    scores = torch.randn(2, 5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(margin_regularizer(scores, labels), direct_margin(scores, labels))


def test_margin_is_finite_and_correct_for_huge_logits():
    scores = torch.tensor([[[1e4, 1e4 - 2.0, -1e4]], [[1e4 - 1.0, 1e4, 0.0]]])
    labels = torch.tensor([0])
    value = margin_regularizer(scores, labels)
    assert torch.isfinite(value)
    # terms: exp(-2), exp(-2e4) ~ 0, exp(1), exp(-(1e4-1)) ~ 0
    expected = math.log(math.exp(-2.0) + math.exp(1.0))
    assert abs(value.item() - expected) < 1e-4


def test_margin_gradient_is_finite_for_huge_logits():
    scores = (torch.randn(2, 3, 6) * 1e4).requires_grad_(True)
    margin_regularizer(scores, torch.tensor([1, 2, 5])).backward()
    assert torch.isfinite(scores.grad).all()
