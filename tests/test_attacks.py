"""Attacks: budgets, uni-modal isolation, strength ordering, pixel clamping, and no side effects."""

from __future__ import annotations

import copy

import pytest
import torch

from crmt.robustness.attacks import (
    FGM,
    L2PGD,
    PixelRange,
    clean_pass,
    joint_norm,
    missing_modality,
    predict,
    rescaled,
)
from helpers import validation_batch

IMAGENET = PixelRange((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def valid_pixel_inputs(batch: int = 6):
    """Visual inputs that are normalised images of [0, 1] pixels, and matching audio."""
    generator = torch.Generator().manual_seed(3)
    pixels = torch.rand(batch, 3, 2, 16, 16, generator=generator)
    mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1, 1)
    return [(pixels - mean) / std, torch.randn(batch, 1, 12, 16, generator=generator)], torch.arange(batch) % 3


@pytest.mark.parametrize("model_name", ["trained_jt", "trained_crmt"])
@pytest.mark.parametrize(
    "attack", [FGM(0.5), L2PGD(0.5), L2PGD(0.5, steps=7, random_start=True)], ids=["fgm", "pgd", "pgd-random-start"]
)
def test_multimodal_perturbation_stays_in_the_joint_ball(model_name, attack, data, request):
    model = request.getfixturevalue(model_name)
    inputs, labels = validation_batch(data)
    adversarial = attack(model, inputs, labels, generator=torch.Generator().manual_seed(0))
    norms = joint_norm([a - x for a, x in zip(adversarial, inputs)])
    assert (norms <= 0.5 + 1e-5).all(), norms.max()
    assert (norms > 0.1).all(), "the attack must move every sample"
    if isinstance(attack, FGM):  # one full step of size eps, no clamp here: the norm is exactly eps
        torch.testing.assert_close(norms, torch.full_like(norms, 0.5), atol=1e-5, rtol=0)
    assert all((a - x).abs().sum() > 0 for a, x in zip(adversarial, inputs)), "both modalities are perturbed"


@pytest.mark.parametrize("attack_cls", [FGM, L2PGD])
@pytest.mark.parametrize("modality", [0, 1])
def test_unimodal_attack_leaves_the_other_modality_bit_identical(attack_cls, modality, trained_jt, data):
    inputs, labels = validation_batch(data)
    adversarial = attack_cls(1.0, modalities=[modality])(trained_jt, inputs, labels)
    other = 1 - modality
    assert adversarial[other] is inputs[other] and torch.equal(adversarial[other], inputs[other])
    norms = (adversarial[modality] - inputs[modality]).flatten(1).norm(dim=1)
    assert (norms <= 1.0 + 1e-5).all() and (norms > 0.2).all()


@pytest.mark.parametrize("model_name", ["trained_jt", "trained_crmt"])
def test_stacked_attacks_with_per_sample_modalities_equal_separate_attacks(model_name, data, request):
    """One batch holding a multi-modal and two uni-modal attacks gives each attack's own examples."""
    model = request.getfixturevalue(model_name)
    inputs, labels = validation_batch(data, size=6)
    plans = [(None, 0.5), ([0], 1.0), ([1], 1.0)]
    separate = [L2PGD(eps, modalities=modalities)(model, inputs, labels) for modalities, eps in plans]
    stacked_inputs = [torch.cat([x] * 3) for x in inputs]
    attacked = torch.zeros(18, 2, dtype=torch.bool)
    attacked[:6] = True
    attacked[6:12, 0] = True
    attacked[12:, 1] = True
    eps = torch.tensor([0.5] * 6 + [1.0] * 12)
    gradients = [torch.cat([g] * 3) for g in clean_pass(model, inputs, labels).gradients]
    stacked = L2PGD(1.0)(model, stacked_inputs, labels.repeat(3), eps=eps, attacked=attacked, clean_gradients=gradients)
    for block, expected in enumerate(separate):
        rows = slice(6 * block, 6 * block + 6)
        for m in range(2):
            if attacked[6 * block, m]:
                torch.testing.assert_close(stacked[m][rows], expected[m], rtol=1e-4, atol=1e-5)
            else:
                assert torch.equal(stacked[m][rows], inputs[m]), "a modality a sample does not attack stays bit-identical"


def test_rescaled_moves_each_perturbation_onto_its_radius():
    generator = torch.Generator().manual_seed(0)
    clean = [torch.randn(3, 4, generator=generator), torch.randn(3, 2, 5, generator=generator)]
    adversarial = [x + torch.randn(x.shape, generator=generator) for x in clean]
    adversarial[0][2], adversarial[1][2] = clean[0][2], clean[1][2]
    radius = torch.tensor([0.5, 3.0, 2.0])
    moved = rescaled(clean, adversarial, radius)
    norms = joint_norm([a - c for a, c in zip(moved, clean)])
    torch.testing.assert_close(norms, torch.tensor([0.5, 3.0, 0.0]))
    direction = [(a - c)[0] for a, c in zip(adversarial, clean)]
    torch.testing.assert_close((moved[1] - clean[1])[0], direction[1] * 0.5 / joint_norm([d[None] for d in direction]))


def accuracy(model, inputs, labels) -> float:
    return (predict(model, inputs) == labels).float().mean().item()


def test_pgd_is_at_least_as_strong_as_fgm_and_accuracy_falls_with_eps(trained_jt, data):
    inputs, labels = validation_batch(data)
    clean = accuracy(trained_jt, inputs, labels)
    assert clean > 0.6
    previous = clean
    for eps in (0.25, 0.5, 1.0, 2.0):
        fgm = accuracy(trained_jt, FGM(eps)(trained_jt, inputs, labels), labels)
        pgd = accuracy(trained_jt, L2PGD(eps, steps=10, step_fraction=0.25)(trained_jt, inputs, labels), labels)
        assert pgd <= fgm, (eps, pgd, fgm)
        assert pgd <= previous, (eps, pgd, previous)
        previous = pgd
    assert previous < clean


def test_visual_perturbations_are_clamped_to_valid_pixels_and_audio_is_not(trained_jt):
    inputs, labels = valid_pixel_inputs()
    ranges = [IMAGENET, None]
    for attack in (FGM(50.0), L2PGD(50.0), FGM(50.0, modalities=[0])):
        adversarial = attack(trained_jt, inputs, labels, ranges)
        mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1, 1)
        pixels = adversarial[0] * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert (pixels < 1e-3).any() or (pixels > 1 - 1e-3).any(), "a large budget must hit the pixel bounds"
    audio = FGM(50.0)(trained_jt, inputs, labels, ranges)[1]
    assert joint_norm([audio - inputs[1]]).max() > 1.0, "audio moves freely"


def test_attacks_leave_parameters_gradients_mode_and_inputs_untouched(trained_jt, data):
    model = trained_jt
    model.train()
    state = copy.deepcopy(model.state_dict())
    inputs, labels = validation_batch(data, size=8)
    originals = [x.clone() for x in inputs]
    for attack in (FGM(0.5), L2PGD(0.5), L2PGD(1.0, modalities=[1])):
        attack(model, inputs, labels)
    clean_pass(model, inputs, labels)
    assert model.training, "the model's training mode is restored"
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), f"{name} changed (batch norm statistics must not move)"
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(x, o) for x, o in zip(inputs, originals))
    model.eval()


def test_attacks_work_inside_inference_mode(trained_jt, data):
    inputs, labels = validation_batch(data, size=8)
    expected = L2PGD(0.5)(trained_jt, inputs, labels)
    with torch.inference_mode():
        inference_inputs = [x.clone() for x in inputs]
        adversarial = L2PGD(0.5)(trained_jt, inference_inputs, labels)
    for a, e in zip(adversarial, expected):
        torch.testing.assert_close(a, e)


def test_per_sample_budgets_and_reused_clean_gradients(trained_jt, data):
    inputs, labels = validation_batch(data, size=8)
    budgets = torch.linspace(0.05, 2.0, 8)
    adversarial = L2PGD(1.0)(trained_jt, inputs, labels, eps=budgets)
    assert (joint_norm([a - x for a, x in zip(adversarial, inputs)]) <= budgets + 1e-5).all()
    gradients = clean_pass(trained_jt, inputs, labels).gradients
    reused = L2PGD(0.5)(trained_jt, inputs, labels, clean_gradients=gradients)
    for a, b in zip(reused, L2PGD(0.5)(trained_jt, inputs, labels)):
        torch.testing.assert_close(a, b)


def test_missing_modality_replaces_only_that_input():
    inputs = [torch.randn(2, 3), torch.randn(2, 4)]
    result = missing_modality(inputs, 1, fill=0.5)
    assert result[0] is inputs[0]
    assert torch.equal(result[1], torch.full((2, 4), 0.5))


def test_invalid_attack_settings_are_named():
    with pytest.raises(ValueError, match="steps"):
        L2PGD(0.5, steps=0)
    with pytest.raises(ValueError, match="eps"):
        FGM(-1.0)
