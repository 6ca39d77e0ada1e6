"""tau~ estimation: both gradient methods equal a naive per-sample, per-class loop."""

import pytest
import torch

from crmt.models.encoders import FrameEncoder, SpectrogramEncoder
from crmt.robustness.lipschitz import score_gradient_norms, score_input_gradients
from crmt.models.heads import orthonormal_rows


def naive_norms(encoder, weight, inputs):
    """One forward and one backward per (sample, class), each on its own graph."""
    norms = torch.zeros(inputs.shape[0], weight.shape[0])
    for i in range(inputs.shape[0]):
        for k in range(weight.shape[0]):
            x = inputs[i : i + 1].clone().requires_grad_(True)
            score = (encoder(x) @ weight.T)[0, k]
            (grad,) = torch.autograd.grad(score, x)
            norms[i, k] = grad.norm()
    return norms


def trained_bn_encoder(encoder, shape):
    """Give batch norm non-trivial running statistics, then switch to eval mode."""
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            encoder(torch.randn(*shape) * 2 + 0.5)
    return encoder.eval()


@pytest.mark.parametrize("method", ["loop", "batched"])
@pytest.mark.parametrize(
    "encoder_cls, shape", [(SpectrogramEncoder, (3, 1, 32, 24)), (FrameEncoder, (3, 3, 2, 24, 24))]
)
def test_estimator_equals_naive_loop(method, encoder_cls, shape):
    torch.manual_seed(0)
    encoder = trained_bn_encoder(encoder_cls(shape[1], width=4), shape)
    weight = orthonormal_rows(torch.randn(5, encoder.out_dim)).detach()
    inputs = torch.randn(*shape)
    scores, norms = score_gradient_norms(lambda x: encoder(x) @ weight.T, inputs, method)
    torch.testing.assert_close(scores, encoder(inputs).detach() @ weight.T)
    torch.testing.assert_close(norms, naive_norms(encoder, weight, inputs), rtol=1e-4, atol=1e-6)


def test_estimator_leaves_parameter_gradients_untouched():
    torch.manual_seed(0)
    encoder = trained_bn_encoder(SpectrogramEncoder(1, width=4), (2, 1, 16, 16))
    weight = orthonormal_rows(torch.randn(3, encoder.out_dim)).detach()
    score_gradient_norms(lambda x: encoder(x) @ weight.T, torch.randn(2, 1, 16, 16), "loop")
    assert all(p.grad is None for p in encoder.parameters())


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="'vjp'"):
        score_gradient_norms(lambda x: x, torch.randn(2, 3), "vjp")


def test_score_input_gradients_equal_naive_per_sample_per_class_gradients():
    torch.manual_seed(0)
    encoder = trained_bn_encoder(FrameEncoder(3, width=4), (3, 3, 2, 16, 16))
    weight = torch.randn(4, encoder.out_dim)
    inputs = torch.randn(3, 3, 2, 16, 16).requires_grad_(True)
    gradients = score_input_gradients(encoder(inputs), inputs, weight)
    assert gradients.shape == (3, 4, 3, 2, 16, 16)
    for i in range(3):
        for k in range(4):
            x = inputs[i : i + 1].detach().clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad((encoder(x) @ weight.T)[0, k], x)
            torch.testing.assert_close(gradients[i, k], gradient[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients.flatten(2).norm(dim=2), score_gradient_norms(
        lambda x: encoder(x) @ weight.T, inputs.detach())[1], rtol=1e-4, atol=1e-6)
