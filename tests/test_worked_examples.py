"""Worked examples of the paper's equations (method.md §1-§3) with numbers small enough to check by hand.

Each example's comment derives the expected value; the code under test is in
crmt.robustness.certify and crmt.losses. Modality order: visual (m = 0), audio (m = 1).
"""

import math

import pytest
import torch

from crmt.losses import margin_regularizer, mixup_margin_regularizer
from crmt.robustness.certify import (
    certified_accuracy,
    certified_radius,
    linear_pair_lipschitz,
    orthogonal_pair_lipschitz,
    runner_up_bound,
    unimodal_radius,
)

# Two classes. a^(v) = [1, -1], a^(a) = [2, 1]; tau~^(v) = tau~^(a) = [1, 2]; b~ = [0.5, 0].
TWO_CLASS_INTEGRATION = torch.tensor([[1.0, -1.0], [2.0, 1.0]])
TWO_CLASS_TAU = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
TWO_CLASS_BIAS = torch.tensor([0.5, 0.0])
# One sample: s^(v) = [2, 1], s^(a) = [1, 0], shape (M=2, B=1, K=2).
TWO_CLASS_SCORES = torch.tensor([[[2.0, 1.0]], [[1.0, 0.0]]])
# h~_0 = 1*2 + 2*1 + 0.5 = 4.5 and h~_1 = (-1)*1 + 1*0 + 0 = -1: the margin h~_0 - h~_1 is 5.5.
TWO_CLASS_LOGITS = torch.tensor([[4.5, -1.0]])


def test_orthogonal_pair_lipschitz_adds_the_weighted_constants_of_both_classes():
    # L[m, y, j] = |a_y^(m)| tau~_y^(m) + |a_j^(m)| tau~_j^(m) (Theorem 3.5's denominator terms):
    # visual: |1|*1 = 1 and |-1|*2 = 2, so L = [[1+1, 1+2], [2+1, 2+2]] = [[2, 3], [3, 4]];
    # audio:  |2|*1 = 2 and |1|*2 = 2,  so L = [[4, 4], [4, 4]].
    expected = torch.tensor([[[2.0, 3.0], [3.0, 4.0]], [[4.0, 4.0], [4.0, 4.0]]])
    torch.testing.assert_close(orthogonal_pair_lipschitz(TWO_CLASS_INTEGRATION, TWO_CLASS_TAU), expected)


def test_certified_radius_is_the_margin_over_the_3_4_5_norm():
    # y = 0, j = 1: L^(v) = 3 and L^(a) = 4, so sqrt(3^2 + 4^2) = 5 and the radius is 5.5 / 5 = 1.1.
    table = orthogonal_pair_lipschitz(TWO_CLASS_INTEGRATION, TWO_CLASS_TAU)
    torch.testing.assert_close(certified_radius(TWO_CLASS_LOGITS, torch.tensor([0]), table), torch.tensor([1.1]))


def test_unimodal_radius_divides_the_margin_by_one_modality_term():
    # Attack on the visual input only: 5.5 / 3; on the audio input only: 5.5 / 4 = 1.375 (both exceed 1.1).
    table = orthogonal_pair_lipschitz(TWO_CLASS_INTEGRATION, TWO_CLASS_TAU)
    labels = torch.tensor([0])
    torch.testing.assert_close(unimodal_radius(TWO_CLASS_LOGITS, labels, table, 0), torch.tensor([5.5 / 3]))
    torch.testing.assert_close(unimodal_radius(TWO_CLASS_LOGITS, labels, table, 1), torch.tensor([1.375]))


def test_a_misclassified_sample_has_radius_zero_but_a_negative_runner_up_bound():
    # Labelled 1, the sample is misclassified (h~_0 > h~_1): its radius is 0. Step 2's bound is not
    # clamped: the runner-up of label 1 is class 0, r_0 = (h~_1 - h~_0) / 5 = -5.5 / 5 = -1.1.
    table = orthogonal_pair_lipschitz(TWO_CLASS_INTEGRATION, TWO_CLASS_TAU)
    labels = torch.tensor([1])
    assert certified_radius(TWO_CLASS_LOGITS, labels, table).item() == 0.0
    bound = runner_up_bound(TWO_CLASS_SCORES, TWO_CLASS_INTEGRATION, TWO_CLASS_BIAS, TWO_CLASS_TAU, labels)
    torch.testing.assert_close(bound, torch.tensor([-1.1]))
    correct = runner_up_bound(TWO_CLASS_SCORES, TWO_CLASS_INTEGRATION, TWO_CLASS_BIAS, TWO_CLASS_TAU, torch.tensor([0]))
    torch.testing.assert_close(correct, torch.tensor([1.1]))


def test_runner_up_bound_takes_the_runner_up_class_not_the_smallest_bound():
    # Three classes, a = 1 everywhere, b~ = 0; tau~^(v) = [1, 2, 5], tau~^(a) = [1, 3, 7].
    # s^(v) = [4, 1, 0], s^(a) = [3, 1, 1], so h~ = [7, 2, 1]; y = 0 and the runner-up is class 1.
    # j = 1: margin 5, L^(v) = 1 + 2 = 3, L^(a) = 1 + 3 = 4, r_1 = 5 / 5 = 1.
    # j = 2: margin 6, L^(v) = 1 + 5 = 6, L^(a) = 1 + 7 = 8, r_2 = 6 / 10 = 0.6.
    # The certified radius is min(1, 0.6) = 0.6; step 2's runner-up bound is r_1 = 1.
    scores = torch.tensor([[[4.0, 1.0, 0.0]], [[3.0, 1.0, 1.0]]])
    integration, bias = torch.ones(2, 3), torch.zeros(3)
    tau = torch.tensor([[1.0, 2.0, 5.0], [1.0, 3.0, 7.0]])
    labels = torch.tensor([0])
    logits = torch.tensor([[7.0, 2.0, 1.0]])
    table = orthogonal_pair_lipschitz(integration, tau)
    torch.testing.assert_close(runner_up_bound(scores, integration, bias, tau, labels), torch.tensor([1.0]))
    torch.testing.assert_close(certified_radius(logits, labels, table), torch.tensor([0.6]))
    # Uni-modal radii: visual min(5/3, 6/6) = 1, audio min(5/4, 6/8) = 0.75.
    torch.testing.assert_close(unimodal_radius(logits, labels, table, 0), torch.tensor([1.0]))
    torch.testing.assert_close(unimodal_radius(logits, labels, table, 1), torch.tensor([0.75]))


def test_linear_pair_lipschitz_is_the_norm_of_the_weighted_gradient_difference():
    # JT's eta_j^(m) = ||A_y g_y - A_j g_j|| (method.md §1) from the Gram matrix of the score gradients.
    # Visual gradients g_0 = [3, 0], g_1 = [0, 4] with A = 1: ||[3, -4]|| = 5.
    # Audio gradients g_0 = [1, 1], g_1 = [1, 1] with A = [2, 1]: ||2 g_0 - g_1|| = ||[1, 1]|| = sqrt(2).
    gram = torch.tensor([[[9.0, 0.0], [0.0, 16.0]], [[2.0, 2.0], [2.0, 2.0]]])
    integration = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    expected = torch.tensor([[[0.0, 5.0], [5.0, 0.0]], [[0.0, math.sqrt(2)], [math.sqrt(2), 0.0]]])
    torch.testing.assert_close(linear_pair_lipschitz(integration, gram), expected)


def test_certified_accuracy_counts_correct_samples_certified_at_each_radius():
    # Radii [0.2, 1.1, 3.0] of samples that are correct, correct, misclassified: at r = 0 two of three
    # count, at r = 1 only the sample with 1.1, at r = 2 none (the 3.0 is misclassified).
    radius, correct = torch.tensor([0.2, 1.1, 3.0]), torch.tensor([True, True, False])
    accuracy = certified_accuracy(radius, correct, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(accuracy, torch.tensor([2 / 3, 1 / 3, 0.0]))


def test_margin_regularizer_is_the_log_of_summed_score_ratios():
    # L1 for one sample = log sum_m sum_{k != y} exp(s_k^(m) - s_y^(m)).
    # Sample 0, y = 0: s^(v) = [0, log 2, log 3] gives 2 + 3; s^(a) = [log 5, log 5, log 10] gives 1 + 2;
    #   log(2 + 3 + 1 + 2) = log 8 = 3 log 2.
    # Sample 1, y = 2: all scores 0 gives 2 modalities x 2 classes x e^0 = 4, log 4 = 2 log 2.
    # Mean over the batch: 2.5 log 2.
    log = math.log
    scores = torch.tensor(
        [[[0.0, log(2), log(3)], [0.0, 0.0, 0.0]], [[log(5), log(5), log(10)], [0.0, 0.0, 0.0]]], dtype=torch.float64
    )
    value = margin_regularizer(scores, torch.tensor([0, 2]))
    assert value.item() == pytest.approx(2.5 * log(2), rel=1e-12)


def test_mixup_margin_regularizer_compares_other_classes_with_the_mixed_label_score():
    # CRMT-Mix, lam = 0.5, y_a = 0, y_b = 1, three classes: only class 2 is left in the sum.
    # visual s = [2, 0, 0]: target 0.5*2 + 0.5*0 = 1, term exp(0 - 1) = 1/e;
    # audio  s = [0, 0, 1]: target 0, term exp(1) = e. Value: log(e + 1/e).
    scores = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]], dtype=torch.float64)
    value = mixup_margin_regularizer(scores, torch.tensor([0]), torch.tensor([1]), 0.5)
    assert value.item() == pytest.approx(math.log(math.e + 1 / math.e), rel=1e-12)
