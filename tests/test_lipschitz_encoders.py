"""1-Lipschitz encoders (AOL, MaxMin, norm pooling) and the sound radii they give (issue: CRMT's certificate made sound).

Every bound is checked against an independent computation: the exact spectral norm of a layer's full matrix (its
Jacobian, built by autograd), power iteration on a trained encoder's Jacobian, the largest local Lipschitz ratio an
attack finds, and the closed form of a network that is exactly 1-Lipschitz.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp, vjp

from crmt.models.encoders import build_encoder
from crmt.models.lipschitz_encoders import LipschitzFrameEncoder, LipschitzSpectrogramEncoder
from crmt.models.lipschitz_layers import AOLConv2d, MaxMin, norm_pool
from crmt.robustness.audit import audit_radii
from crmt.robustness.certificates import sound_pair_lipschitz
from crmt.robustness.certify import ROUNDING_MARGIN, certified_radius, rounding_safe_logits
from crmt.robustness.records import CONSTRUCTION_LIPSCHITZ_SOURCE, CertifiedRadii
from crmt.robustness.suite import GRADIENT_FREE, SUITES, suite_attacks
from crmt.strategies import CRMTJointTraining, JointTraining

SHAPES = {"visual": [3, 2, 16, 16], "audio": [1, 16, 20]}
CLASSES = 4


def full_matrix(function, shape: tuple[int, ...]) -> torch.Tensor:
    """The Jacobian of a function of one input of ``shape`` at a random point, as an (outputs, inputs) float64 matrix."""
    x = torch.randn(1, *shape, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda t: function(t).flatten(), x)
    return jacobian.reshape(-1, x.numel())


@pytest.mark.parametrize(("in_channels", "out_channels", "stride", "size"), [(3, 4, 1, 6), (4, 6, 2, 7), (2, 8, 2, 3)])
def test_aol_convolution_norm_never_exceeds_its_bound(in_channels, out_channels, stride, size):
    torch.manual_seed(in_channels * 10 + size)
    conv = AOLConv2d(in_channels, out_channels, 3, stride).double()
    torch.nn.init.normal_(conv.weight)  # far from orthogonal: AOL must still bound it
    exact = torch.linalg.matrix_norm(full_matrix(conv, (in_channels, size, size)), ord=2).item()
    assert exact <= conv.lipschitz_upper_bound() + 1e-9
    assert conv.lipschitz_upper_bound() == pytest.approx(1.0, abs=1e-6)


def test_aol_is_exact_on_orthogonal_columns():
    """Closed form: columns already orthogonal -> AOL scales each to norm 1, the map is an isometry, its norm 1
    (a 1 x 1 convolution: a linear map of the channels at every position)."""
    layer = AOLConv2d(5, 7, 1).double()
    q, _ = torch.linalg.qr(torch.randn(7, 5, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_((q * torch.tensor([0.5, 2.0, 3.0, 0.1, 1.0], dtype=torch.float64))[:, :, None, None])
    exact = torch.linalg.matrix_norm(layer.scaled_weight().detach()[:, :, 0, 0], ord=2).item()
    assert exact == pytest.approx(1.0, abs=1e-12)
    assert layer.lipschitz_upper_bound() == pytest.approx(exact, abs=1e-9)


def test_tiny_gradient_norm_preserving_network_attains_its_bound():
    """AOL layers (1 x 1 convolutions) with orthogonal weights and MaxMin: the network is piecewise orthogonal, so its
    Jacobian's norm is exactly 1 at every point; brute force over random points reaches the bound, never passes it."""
    torch.manual_seed(0)
    layers = []
    for _ in range(3):
        layer = AOLConv2d(6, 6, 1).double()
        with torch.no_grad():
            layer.weight.copy_(torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0][:, :, None, None])
        layers += [layer, MaxMin()]
    network = torch.nn.Sequential(*layers)
    bound = torch.tensor([layer.lipschitz_upper_bound() for layer in layers if isinstance(layer, AOLConv2d)]).prod().item()
    norms = [torch.linalg.matrix_norm(full_matrix(network, (6, 1, 1)), ord=2).item() for _ in range(20)]
    assert bound == pytest.approx(1.0, abs=1e-9)
    assert max(norms) == pytest.approx(bound, abs=1e-9)
    assert min(norms) == pytest.approx(bound, abs=1e-9)


def test_maxmin_and_norm_pooling_are_one_lipschitz():
    torch.manual_seed(1)
    x, y = torch.randn(64, 6, 5, 5), torch.randn(64, 6, 5, 5)
    maxmin = MaxMin()
    ratio = (maxmin(x) - maxmin(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max() <= 1 + 1e-6
    pooled = (norm_pool(x, (2, 3)) - norm_pool(y, (2, 3))).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert pooled.max() <= 1 + 1e-6
    # equality for a constant difference over the positions (Cauchy-Schwarz is tight there)
    shift = torch.randn(1, 6, 1, 1).expand(1, 6, 5, 5)
    assert (norm_pool(shift, (2, 3))).norm() == pytest.approx(shift.norm().item(), rel=1e-6)
    with pytest.raises(ValueError, match="even number of channels"):
        maxmin(torch.randn(2, 3, 4))


def test_build_encoder_kinds():
    assert isinstance(build_encoder([1, 16, 20], 4, "lipschitz"), LipschitzSpectrogramEncoder)
    assert isinstance(build_encoder([3, 2, 16, 16], 4, "lipschitz"), LipschitzFrameEncoder)
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        build_encoder([1, 16, 20], 4, "vit")
    with pytest.raises(ValueError, match="even channel counts"):
        build_encoder([1, 16, 20], 3, "lipschitz")


def batch(count: int = 24, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Inputs whose class moves both modalities' means, so a few training steps learn something."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % CLASSES
    inputs = []
    for shape in SHAPES.values():
        signal = (labels.float() - 1.5)[:, *([None] * len(shape))]
        inputs.append(torch.randn(count, *shape, generator=generator) + signal)
    return inputs, labels


def trained(model_class, steps: int = 40):
    """A model of ``model_class`` with Lipschitz encoders after ``steps`` Adam steps of CE (trained weights)."""
    torch.manual_seed(0)
    model = model_class(num_classes=CLASSES, input_shapes=SHAPES, encoder_width=4, encoder="lipschitz")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, labels = batch()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs).logits, labels).backward()
        optimizer.step()
    return model.eval()


def power_iteration(function, x: torch.Tensor, iterations: int = 50) -> float:
    """The largest singular value of the Jacobian of ``function`` at ``x`` (one sample), by power iteration."""
    v = torch.randn_like(x)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iterations):
        _, u = jvp(function, (x,), (v,))
        _, pullback = vjp(function, x)
        (v,) = pullback(u)
        sigma = v.norm().sqrt().item()
        v = v / v.norm()
    return sigma


@pytest.mark.parametrize("model_class", [JointTraining, CRMTJointTraining])
def test_bound_is_never_below_trained_encoders_gradient_norms(model_class):
    """Power iteration on each trained encoder's Jacobian at training points, and an attack that maximises the local
    Lipschitz ratio ||phi(x + d) - phi(x)|| / ||d||, never exceed the encoder's bound."""
    model = trained(model_class)
    inputs, _ = batch()
    for m, x in enumerate(inputs):
        bound = model.encoder_lipschitz_bound(m)
        encoder = lambda t, m=m: model.encode_modality(m, t)  # noqa: E731
        spectral = max(power_iteration(encoder, x[i : i + 1]) for i in range(4))
        delta = (1e-2 * torch.randn_like(x[:8])).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=1e-2)
        for _ in range(30):
            ratio = (encoder(x[:8] + delta) - encoder(x[:8])).norm(dim=1) / delta.flatten(1).norm(dim=1)
            optimizer.zero_grad()
            (-ratio.sum()).backward()
            optimizer.step()
        with torch.no_grad():
            found = ((encoder(x[:8] + delta) - encoder(x[:8])).norm(dim=1) / delta.flatten(1).norm(dim=1)).max().item()
        assert 0 < spectral <= bound and 0 < found <= bound + 1e-5, (m, spectral, found, bound)


def test_float32_logits_stay_far_inside_the_rounding_margin():
    model = trained(CRMTJointTraining)
    inputs, labels = batch()
    with torch.no_grad():
        single = model(inputs).logits
        double = model.double()([x.double() for x in inputs]).logits
    scale = 1 + double.abs().amax(dim=1)
    assert ((single.double() - double).abs().amax(dim=1) / scale).max() < ROUNDING_MARGIN / 100
    lowered = rounding_safe_logits(single, labels)
    assert torch.equal(lowered.ne(single), F.one_hot(labels, CLASSES).bool())


@pytest.mark.parametrize("model_class", [JointTraining, CRMTJointTraining])
def test_no_attack_breaks_a_sample_inside_its_sound_radius(model_class):
    """The project's strongest gradient attacks (l2-PGD from the clean input, then APGD-CE and APGD-T) at 0.99 x each
    sample's sound radius break nothing; the same attacks do break samples when the radii are inflated (a table 30x
    too small): the audit can fail."""
    model = trained(model_class)
    inputs, labels = batch(count=32, seed=5)
    table = sound_pair_lipschitz(model)
    with torch.no_grad():
        logits = model(inputs).logits
    radius = CertifiedRadii.of(CONSTRUCTION_LIPSCHITZ_SOURCE, table, logits, labels, model.modalities).multimodal
    suite = [attack for attack in suite_attacks(SUITES["standard"], CLASSES) if attack.name not in GRADIENT_FREE]
    generator = torch.Generator().manual_seed(0)
    sound = audit_radii(model, inputs, labels, radius, steps=20, suite=suite, generator=generator)
    assert int(sound.eligible.sum()) >= 8
    assert not bool(sound.violated.any()) and not bool(sound.violated_adaptive.any())
    inflated = certified_radius(logits, labels, table / 30)
    broken = audit_radii(model, inputs, labels, inflated, steps=20, suite=suite, generator=generator)
    assert bool(broken.violated_adaptive.any())


def test_crmt_takes_the_encoders_bounds_as_tau():
    model = CRMTJointTraining(num_classes=CLASSES, input_shapes=SHAPES, encoder_width=4, encoder="lipschitz")
    assert model.tau_is_sound
    tau = model.sound_tau()
    bounds = torch.tensor([model.encoder_lipschitz_bound(m) for m in range(2)], dtype=torch.float64)
    assert tau.shape == (2, CLASSES)
    assert bool((tau.double() >= bounds[:, None]).all()) and bool((tau.double() - bounds[:, None] < 1e-6).all())
    assert not CRMTJointTraining(num_classes=CLASSES, input_shapes=SHAPES, encoder_width=4).tau_is_sound
