"""Certified bounds of the orthogonal framework against hand computations and an exact linear model."""

import torch

from crmt.certify import certified_bounds, certified_radius, runner_up_bound, runner_up_class


def test_bound_matches_hand_computation():
    scores = torch.tensor([[[3.0, 1.0, 0.0]], [[2.0, 0.5, 1.0]]])  # (M=2, B=1, K=3)
    integration = torch.tensor([[1.0, 2.0, 1.0], [0.5, 1.0, 3.0]])
    bias = torch.tensor([0.1, 0.0, -0.2])
    tau = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 1.0]])
    labels = torch.tensor([0])
    bounds = certified_bounds(scores, integration, bias, tau, labels)
    # j = 1: numerator (1*3 - 2*1) + (0.5*2 - 1*0.5) + 0.1 = 1.6; den sqrt((1*1 + 2*2)^2 + (0.5*0.5 + 1*0.25)^2)
    r1 = 1.6 / ((1 + 4) ** 2 + (0.25 + 0.25) ** 2) ** 0.5
    # j = 2: numerator (3 - 0) + (1 - 3) + 0.3 = 1.3; den sqrt((1 + 3)^2 + (0.25 + 3)^2)
    r2 = 1.3 / ((1 + 3) ** 2 + (0.25 + 3) ** 2) ** 0.5
    torch.testing.assert_close(bounds[0, 1:], torch.tensor([r1, r2]))
    assert bounds[0, 0] == float("inf")
    torch.testing.assert_close(certified_radius(scores, integration, bias, tau, labels), torch.tensor([min(r1, r2)]))


def test_radius_is_zero_for_misclassified_and_runner_up_is_not_label():
    scores = torch.tensor([[[0.0, 2.0]], [[0.0, 1.0]]])
    ones = torch.ones(2, 2)
    radius = certified_radius(scores, ones, torch.zeros(2), ones, torch.tensor([0]))
    assert radius.item() == 0.0
    logits = torch.tensor([[5.0, 4.0, 9.0]])
    assert runner_up_class(logits, torch.tensor([2])).item() == 0


def test_radius_never_exceeds_exact_distance_of_a_linear_model():
    """Linear encoders s^(m)(x) = A_m x^(m): tau_k^(m) = ||row k of A_m||, and the exact l2 distance to
    the boundary of the pair (y, j) is margin_j / ||concat_m(a_y A_y - a_j A_j)||. The certified
    radius is a lower bound of the smallest such distance."""
    torch.manual_seed(0)
    k, d = 4, 6
    maps = [torch.randn(k, d), torch.randn(k, d)]
    integration = torch.rand(2, k) + 0.5
    bias = torch.randn(k) * 0.1
    x = [torch.randn(1, d), torch.randn(1, d)]
    scores = torch.stack([xi @ a.T for xi, a in zip(x, maps)])
    logits = (integration[:, None, :] * scores).sum(0) + bias
    y = int(logits.argmax())
    tau = torch.stack([a.norm(dim=1) for a in maps])
    radius = certified_radius(scores, integration, bias, tau, torch.tensor([y])).item()
    distances = []
    for j in range(k):
        if j == y:
            continue
        gradient = torch.cat([integration[m, y] * maps[m][y] - integration[m, j] * maps[m][j] for m in range(2)])
        distances.append(((logits[0, y] - logits[0, j]) / gradient.norm()).item())
    assert 0 < radius <= min(distances) + 1e-6


def test_bound_equals_margin_over_lipschitz_when_rows_antiparallel():
    """When A_j = -A_y in each modality the Lipschitz bound is tight: the radius is exact."""
    rows = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 3.0, 4.0])]
    maps = [torch.stack([r, -r]) for r in rows]  # K = 2
    integration = torch.ones(2, 2)
    bias = torch.zeros(2)
    x = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    scores = torch.stack([xi @ a.T for xi, a in zip(x, maps)])
    tau = torch.stack([a.norm(dim=1) for a in maps])
    label = torch.tensor([0])
    radius = certified_radius(scores, integration, bias, tau, label).item()
    # h_0 - h_1 = 2 (r_v . x_v + r_a . x_a); the closest boundary point is at distance margin / ||grad||
    margin = 2 * (rows[0] @ x[0][0] + rows[1] @ x[1][0])
    gradient_norm = 2 * torch.cat(rows).norm()
    assert abs(radius - (margin / gradient_norm).item()) < 1e-5


def test_runner_up_bound_picks_runner_up():
    torch.manual_seed(0)
    scores = torch.randn(2, 5, 4)
    integration, bias, tau = torch.rand(2, 4) + 0.1, torch.randn(4), torch.rand(2, 4) + 0.1
    labels = torch.randint(0, 4, (5,))
    logits = (integration[:, None, :] * scores).sum(0) + bias
    j = runner_up_class(logits, labels)
    expected = certified_bounds(scores, integration, bias, tau, labels)[torch.arange(5), j]
    torch.testing.assert_close(runner_up_bound(scores, integration, bias, tau, labels), expected)
