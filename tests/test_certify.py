"""Certified bounds against hand computations and exact linear models (every Lipschitz constant known)."""

import math

import torch

from crmt.robustness.certify import (
    certified_accuracy,
    certified_bounds,
    certified_radius,
    linear_pair_lipschitz,
    orthogonal_pair_lipschitz,
    runner_up_bound,
    runner_up_class,
    unimodal_radius,
)


def fused(scores, integration, bias):
    return (integration[:, None, :] * scores).sum(0) + bias


def test_orthogonal_bound_matches_hand_computation():
    scores = torch.tensor([[[3.0, 1.0, 0.0]], [[2.0, 0.5, 1.0]]])  # (M=2, B=1, K=3)
    integration = torch.tensor([[1.0, 2.0, 1.0], [0.5, 1.0, 3.0]])
    bias = torch.tensor([0.1, 0.0, -0.2])
    tau = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 1.0]])
    labels = torch.tensor([0])
    table = orthogonal_pair_lipschitz(integration, tau)
    bounds = certified_bounds(fused(scores, integration, bias), labels, table)
    # j = 1: numerator (1*3 - 2*1) + (0.5*2 - 1*0.5) + 0.1 = 1.6; den sqrt((1*1 + 2*2)^2 + (0.5*0.5 + 1*0.25)^2)
    r1 = 1.6 / ((1 + 4) ** 2 + (0.25 + 0.25) ** 2) ** 0.5
    # j = 2: numerator (3 - 0) + (1 - 3) + 0.3 = 1.3; den sqrt((1 + 3)^2 + (0.25 + 3)^2)
    r2 = 1.3 / ((1 + 3) ** 2 + (0.25 + 3) ** 2) ** 0.5
    torch.testing.assert_close(bounds[0, 1:], torch.tensor([r1, r2]))
    assert bounds[0, 0] == float("inf")
    radius = certified_radius(fused(scores, integration, bias), labels, table)
    torch.testing.assert_close(radius, torch.tensor([min(r1, r2)]))
    # uni-modal (Prop. 3.4 form): the same numerators over one modality's term
    visual = unimodal_radius(fused(scores, integration, bias), labels, table, 0)
    torch.testing.assert_close(visual, torch.tensor([min(1.6 / 5, 1.3 / 4)]))


def test_radius_is_zero_for_misclassified_and_runner_up_is_not_label():
    logits = torch.tensor([[0.0, 3.0]])
    table = torch.ones(2, 2, 2)
    assert certified_radius(logits, torch.tensor([0]), table).item() == 0.0
    assert unimodal_radius(logits, torch.tensor([0]), table, 1).item() == 0.0
    assert runner_up_class(torch.tensor([[5.0, 4.0, 9.0]]), torch.tensor([2])).item() == 0


def linear_model(seed: int, k: int = 4, d: int = 6):
    """Linear encoders s^(m)(x) = A_m x^(m) fused by h = sum_m a^(m) * s^(m) + b."""
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(k, d, generator=generator), torch.randn(k, d, generator=generator)]
    integration = torch.rand(2, k, generator=generator) + 0.5
    bias = torch.randn(k, generator=generator) * 0.1
    x = [torch.randn(1, d, generator=generator), torch.randn(1, d, generator=generator)]
    return maps, integration, bias, x


def exact_boundary_distances(maps, integration, logits, y):
    """l2 distance from x to the boundary h_y = h_j of each class pair, and per modality."""
    joint, per_modality = [], [[], []]
    for j in range(logits.shape[1]):
        if j == y:
            continue
        margin = (logits[0, y] - logits[0, j]).item()
        rows = [integration[m, y] * maps[m][y] - integration[m, j] * maps[m][j] for m in range(2)]
        joint.append(margin / torch.cat(rows).norm().item())
        for m in range(2):
            per_modality[m].append(margin / rows[m].norm().item())
    return min(joint), [min(d) for d in per_modality]


def test_orthogonal_radius_never_exceeds_exact_distance_of_a_linear_model():
    for seed in range(20):
        maps, integration, bias, x = linear_model(seed)
        scores = torch.stack([xi @ a.T for xi, a in zip(x, maps)])
        logits = fused(scores, integration, bias)
        y = int(logits.argmax())
        tau = torch.stack([a.norm(dim=1) for a in maps])  # exact Lipschitz constant of each s_k
        table = orthogonal_pair_lipschitz(integration, tau)
        joint, per_modality = exact_boundary_distances(maps, integration, logits, y)
        labels = torch.tensor([y])
        assert 0 < certified_radius(logits, labels, table).item() <= joint + 1e-6
        for m in range(2):
            assert unimodal_radius(logits, labels, table, m).item() <= per_modality[m] + 1e-6


def test_exact_pair_table_of_a_linear_model_gives_the_exact_uni_modal_distance():
    """With the exact gradients of each class-pair margin (the JT form), the uni-modal radius is exact."""
    for seed in range(10):
        maps, integration, bias, x = linear_model(seed)
        scores = torch.stack([xi @ a.T for xi, a in zip(x, maps)])
        logits = fused(scores, integration, bias)
        y = int(logits.argmax())
        gram = torch.stack([a @ a.T for a in maps])  # gradients of s_k are the rows of A_m
        table = linear_pair_lipschitz(integration, gram)
        joint, per_modality = exact_boundary_distances(maps, integration, logits, y)
        labels = torch.tensor([y])
        for m in range(2):
            torch.testing.assert_close(unimodal_radius(logits, labels, table, m).item(), per_modality[m], rtol=1e-4, atol=1e-6)
        assert certified_radius(logits, labels, table).item() <= joint + 1e-6


def test_linear_pair_table_matches_norms_of_row_differences():
    torch.manual_seed(0)
    rows = torch.randn(2, 5, 7)
    integration = torch.rand(2, 5) + 0.1
    table = linear_pair_lipschitz(integration, rows @ rows.transpose(1, 2))
    weighted = integration[:, :, None] * rows
    expected = (weighted[:, :, None, :] - weighted[:, None, :, :]).norm(dim=-1)
    torch.testing.assert_close(table, expected, atol=1e-5, rtol=1e-5)


def test_bound_equals_margin_over_lipschitz_when_rows_antiparallel():
    """When A_j = -A_y in each modality the Lipschitz bound is tight: the radius is exact."""
    rows = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 3.0, 4.0])]
    maps = [torch.stack([r, -r]) for r in rows]  # K = 2
    integration = torch.ones(2, 2)
    x = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    scores = torch.stack([xi @ a.T for xi, a in zip(x, maps)])
    tau = torch.stack([a.norm(dim=1) for a in maps])
    radius = certified_radius(fused(scores, integration, torch.zeros(2)), torch.tensor([0]), orthogonal_pair_lipschitz(integration, tau))
    margin = 2 * (rows[0] @ x[0][0] + rows[1] @ x[1][0])
    gradient_norm = 2 * torch.cat(rows).norm()
    assert abs(radius.item() - (margin / gradient_norm).item()) < 1e-5


def runner_up_bound_by_loop(scores, integration, bias, tau, labels) -> list[float]:
    """Theorem 3.5's r_j(x_i) for j the largest fused logit other than y_i, one sample and one class at a time."""
    s, a, b, t = scores.tolist(), integration.tolist(), bias.tolist(), tau.tolist()
    modalities, classes = range(len(s)), range(len(b))
    bounds = []
    for i, y in enumerate(labels.tolist()):
        logits = [sum(a[m][k] * s[m][i][k] for m in modalities) + b[k] for k in classes]
        j = max((k for k in classes if k != y), key=lambda k: logits[k])
        pair = [abs(a[m][y]) * t[m][y] + abs(a[m][j]) * t[m][j] for m in modalities]
        bounds.append((logits[y] - logits[j]) / math.sqrt(sum(value * value for value in pair)))
    return bounds


def test_runner_up_bound_equals_a_per_sample_loop_over_classes():
    """Random scores, weights of both signs and labels, misclassified samples (negative bounds) included."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 12, 4, generator=generator, dtype=torch.float64)
    integration = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    tau = torch.rand(2, 4, generator=generator, dtype=torch.float64) + 0.1
    labels = torch.randint(0, 4, (12,), generator=generator)
    expected = torch.tensor(runner_up_bound_by_loop(scores, integration, bias, tau, labels), dtype=torch.float64)
    assert (expected < 0).any() and (expected > 0).any(), "the check needs correct and misclassified samples"
    torch.testing.assert_close(runner_up_bound(scores, integration, bias, tau, labels), expected, rtol=1e-12, atol=1e-12)


def test_certified_accuracy_counts_correct_samples_at_or_above_each_radius():
    radius = torch.tensor([0.0, 0.5, 1.0, 2.0, 0.0])
    correct = torch.tensor([True, True, True, True, False])
    accuracy = certified_accuracy(radius, correct, torch.tensor([0.0, 0.5, 1.5, 3.0]))
    torch.testing.assert_close(accuracy, torch.tensor([0.8, 0.6, 0.2, 0.0]))
