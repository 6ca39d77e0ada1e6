"""Fusion heads: shapes, the JT decomposition and orthonormal rows that survive training."""

import pytest
import torch

from crmt.models.heads import ConcatFusion, OrthogonalFusion, orthonormal_rows


def test_concat_fusion_scores_sum_to_logits_minus_bias():
    torch.manual_seed(0)
    head = ConcatFusion([5, 7], num_classes=3)
    features = [torch.randn(4, 5), torch.randn(4, 7)]
    output = head(features)
    assert output.logits.shape == (4, 3) and output.scores.shape == (2, 4, 3)
    expected = head.linear(torch.cat(features, dim=1))
    torch.testing.assert_close(output.logits, expected)
    torch.testing.assert_close(output.scores.sum(0) + head.linear.bias, expected)


def test_orthonormal_rows_is_orthonormal_and_keeps_row_space():
    torch.manual_seed(0)
    raw = torch.randn(6, 20)
    weight = orthonormal_rows(raw)
    torch.testing.assert_close(weight @ weight.T, torch.eye(6), atol=1e-5, rtol=0)
    # same row space: projecting raw onto the rows of weight reproduces raw
    torch.testing.assert_close(raw @ weight.T @ weight, raw, atol=1e-5, rtol=1e-5)


def test_orthogonality_holds_after_training_steps():
    torch.manual_seed(0)
    head = OrthogonalFusion([16, 12], num_classes=5)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    for _ in range(25):
        features = [torch.randn(8, 16), torch.randn(8, 12)]
        loss = torch.nn.functional.cross_entropy(head(features).logits, torch.randint(0, 5, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for weight in head.modality_weights():
        torch.testing.assert_close(weight @ weight.T, torch.eye(5), atol=1e-5, rtol=0)
    assert not torch.allclose(head.integration, torch.ones_like(head.integration))


def test_orthogonal_fusion_formula():
    torch.manual_seed(0)
    head = OrthogonalFusion([9, 9], num_classes=4, init_integration=0.5)
    with torch.no_grad():
        head.integration.copy_(torch.rand(2, 4))
        head.bias.copy_(torch.randn(4))
    features = [torch.randn(3, 9), torch.randn(3, 9)]
    output = head(features)
    w_v, w_a = head.modality_weights()
    s_v, s_a = features[0] @ w_v.T, features[1] @ w_a.T
    torch.testing.assert_close(output.scores, torch.stack([s_v, s_a]))
    torch.testing.assert_close(output.logits, head.integration[0] * s_v + head.integration[1] * s_a + head.bias)


def test_orthogonal_fusion_rejects_narrow_features():
    with pytest.raises(ValueError, match="feature dim 4 < num_classes 6"):
        OrthogonalFusion([16, 4], num_classes=6)
