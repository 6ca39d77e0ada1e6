"""Every attack under its one call: the joint ball, uni-modal isolation, per-sample budgets and subsets,
pixel clamping, strength ordering, and no side effects."""

from __future__ import annotations

import copy

import pytest
import torch

from crmt.robustness.apgd import APGD
from crmt.robustness.attack import CleanPass, clean_pass, missing_modality, predict
from crmt.robustness.ball import Ball, PixelRange, joint_norm, rescaled
from crmt.robustness.pgd import FGM, L2PGD
from crmt.robustness.square import SquareL2
from helpers import validation_batch

IMAGENET = PixelRange((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ATTACKS = {
    "fgm": FGM(),
    "pgd": L2PGD(),
    "pgd-random-start": L2PGD(7, random_start=True),
    "apgd-ce": APGD("ce", steps=8),
    "apgd-t": APGD("margin-targeted", steps=8, targets=2),
    "square": SquareL2(queries=40),
}
"""Every attack, small enough for the tests (the data module has 3 classes: the targeted margin, not DLR)."""


def valid_pixel_inputs(batch: int = 6):
    """Visual inputs that are normalised images of [0, 1] pixels, and matching audio."""
    generator = torch.Generator().manual_seed(3)
    pixels = torch.rand(batch, 3, 2, 16, 16, generator=generator)
    mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1, 1)
    return [(pixels - mean) / std, torch.randn(batch, 1, 12, 16, generator=generator)], torch.arange(batch) % 3


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("model_name", ["trained_jt", "trained_crmt"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_multimodal_perturbation_stays_in_the_joint_ball(model_name, name, data, request):
    model = request.getfixturevalue(model_name)
    inputs, labels = validation_batch(data)
    result = ATTACKS[name](model, inputs, labels, Ball.around(inputs, 0.5), generator=seeded())
    norms = joint_norm([a - x for a, x in zip(result.adversarial, inputs)])
    assert (norms <= 0.5 + 1e-5).all(), norms.max()
    if name in ("fgm", "square"):  # a full step of size eps / a search on the sphere, no clamp here: the norm is eps
        torch.testing.assert_close(norms, torch.full_like(norms, 0.5), atol=1e-4, rtol=0)
    moved = ~result.broken if name.startswith("apgd") or name == "square" else torch.ones_like(result.broken)
    assert (norms[moved] > 0.1).all(), "the attack moves every sample it still attacks"
    assert all((a - x).abs().sum() > 0 for a, x in zip(result.adversarial, inputs)), "both modalities are perturbed"
    torch.testing.assert_close(result.broken, predict(model, result.adversarial) != labels)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("modality", [0, 1])
def test_unimodal_attack_leaves_the_other_modality_bit_identical(name, modality, trained_jt, data):
    inputs, labels = validation_batch(data)
    adversarial = ATTACKS[name](trained_jt, inputs, labels, Ball.around(inputs, 1.0, [modality]), generator=seeded()).adversarial
    other = 1 - modality
    assert adversarial[other] is inputs[other] and torch.equal(adversarial[other], inputs[other])
    norms = (adversarial[modality] - inputs[modality]).flatten(1).norm(dim=1)
    assert (norms <= 1.0 + 1e-5).all() and norms.max() > 0.2


@pytest.mark.parametrize("model_name", ["trained_jt", "trained_crmt"])
def test_stacked_attacks_with_per_sample_modalities_equal_separate_attacks(model_name, data, request):
    """One batch holding a multi-modal and two uni-modal attacks gives each attack's own examples."""
    model = request.getfixturevalue(model_name)
    inputs, labels = validation_batch(data, size=6)
    plans = [(None, 0.5), ([0], 1.0), ([1], 1.0)]
    separate = [L2PGD()(model, inputs, labels, Ball.around(inputs, eps, modalities)).adversarial for modalities, eps in plans]
    stacked_inputs = [torch.cat([x] * 3) for x in inputs]
    attacked = torch.zeros(18, 2, dtype=torch.bool)
    attacked[:6] = True
    attacked[6:12, 0] = True
    attacked[12:, 1] = True
    ball = Ball(torch.tensor([0.5] * 6 + [1.0] * 12), attacked, (None, None))
    first = clean_pass(model, inputs, labels)
    clean = CleanPass(first.logits.repeat(3, 1), [torch.cat([g] * 3) for g in first.gradients], [f.repeat(3, 1) for f in first.features])
    stacked = L2PGD()(model, stacked_inputs, labels.repeat(3), ball, clean=clean).adversarial
    for block, expected in enumerate(separate):
        rows = slice(6 * block, 6 * block + 6)
        for m in range(2):
            if attacked[6 * block, m]:
                torch.testing.assert_close(stacked[m][rows], expected[m], rtol=1e-4, atol=1e-5)
            else:
                assert torch.equal(stacked[m][rows], inputs[m]), "a modality a sample does not attack stays bit-identical"


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_a_ball_attacks_only_its_rows_and_equals_the_attack_of_those_rows(name, trained_jt, data):
    """Samples with a zero budget or no attacked modality are returned as they are; the others get exactly
    what an attack on them alone gives."""
    inputs, labels = validation_batch(data, size=8)
    budget = torch.tensor([0.5, 0.0, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5])
    attacked = torch.ones(8, 2, dtype=torch.bool)
    attacked[3] = False
    ball = Ball(budget, attacked, (None, None))
    result = ATTACKS[name](trained_jt, inputs, labels, ball, generator=seeded())
    rows = torch.tensor([0, 2, 5, 6, 7])
    alone = ATTACKS[name](trained_jt, [x[rows] for x in inputs], labels[rows], Ball.around([x[rows] for x in inputs], 0.5),
                          generator=seeded())
    for m in range(2):
        torch.testing.assert_close(result.adversarial[m][rows], alone.adversarial[m], rtol=1e-4, atol=1e-5)
        for skipped in (1, 3, 4):
            assert torch.equal(result.adversarial[m][skipped], inputs[m][skipped])
    assert not result.broken[[1, 3, 4]].any()
    assert torch.equal(result.broken[rows], alone.broken)


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


def test_pgd_is_at_least_as_strong_as_fgm_apgd_as_pgd_and_accuracy_falls_with_eps(trained_jt, data):
    inputs, labels = validation_batch(data)
    clean = accuracy(trained_jt, inputs, labels)
    assert clean > 0.6
    previous = clean
    for eps in (1.0, 2.0, 4.0, 8.0):
        ball = Ball.around(inputs, eps)
        fgm = accuracy(trained_jt, FGM()(trained_jt, inputs, labels, ball).adversarial, labels)
        pgd = accuracy(trained_jt, L2PGD(10, 0.25)(trained_jt, inputs, labels, ball).adversarial, labels)
        apgd = 1 - APGD("ce", steps=20)(trained_jt, inputs, labels, ball, generator=seeded()).broken.float().mean().item()
        assert pgd <= fgm, (eps, pgd, fgm)
        assert apgd <= pgd, (eps, apgd, pgd)
        assert pgd <= previous, (eps, pgd, previous)
        previous = pgd
    assert previous < clean


@pytest.mark.parametrize("name", list(ATTACKS))
def test_visual_perturbations_are_clamped_to_valid_pixels_and_audio_is_not(name, trained_jt):
    inputs, labels = valid_pixel_inputs()
    ranges = [IMAGENET, None]
    mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1, 1)
    for modalities in (None, [0]):
        ball = Ball.around(inputs, 50.0, modalities, ranges)
        adversarial = ATTACKS[name](trained_jt, inputs, labels, ball, generator=seeded()).adversarial
        pixels = adversarial[0] * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert (pixels < 1e-3).any() or (pixels > 1 - 1e-3).any(), "a large budget must hit the pixel bounds"
    audio = FGM()(trained_jt, inputs, labels, Ball.around(inputs, 50.0, pixel_ranges=ranges)).adversarial[1]
    assert joint_norm([audio - inputs[1]]).max() > 1.0, "audio moves freely"


def test_attacks_leave_parameters_gradients_mode_and_inputs_untouched(trained_jt, data):
    model = trained_jt
    model.train()
    state = copy.deepcopy(model.state_dict())
    inputs, labels = validation_batch(data, size=8)
    originals = [x.clone() for x in inputs]
    for attack in ATTACKS.values():
        for modalities in (None, [1]):
            attack(model, inputs, labels, Ball.around(inputs, 0.5, modalities), generator=seeded()).broken
    clean_pass(model, inputs, labels)
    assert model.training, "the model's training mode is restored"
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), f"{name} changed (batch norm statistics must not move)"
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(x, o) for x, o in zip(inputs, originals))
    model.eval()


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_attacks_work_inside_inference_mode(name, trained_jt, data):
    inputs, labels = validation_batch(data, size=8)
    expected = ATTACKS[name](trained_jt, inputs, labels, Ball.around(inputs, 0.5), generator=seeded())
    with torch.inference_mode():
        inference_inputs = [x.clone() for x in inputs]
        result = ATTACKS[name](trained_jt, inference_inputs, labels, Ball.around(inference_inputs, 0.5), generator=seeded())
        broken = result.broken
    for a, e in zip(result.adversarial, expected.adversarial):
        torch.testing.assert_close(a, e)
    assert torch.equal(broken, expected.broken)


def test_per_sample_budgets_and_reused_clean_gradients(trained_jt, data):
    inputs, labels = validation_batch(data, size=8)
    budgets = torch.linspace(0.05, 2.0, 8)
    for attack in (L2PGD(), APGD("ce", steps=6), SquareL2(queries=20)):
        adversarial = attack(trained_jt, inputs, labels, Ball.around(inputs, budgets), generator=seeded()).adversarial
        assert (joint_norm([a - x for a, x in zip(adversarial, inputs)]) <= budgets + 1e-5).all()
    ball = Ball.around(inputs, 0.5)
    reused = L2PGD()(trained_jt, inputs, labels, ball, clean=clean_pass(trained_jt, inputs, labels)).adversarial
    for a, b in zip(reused, L2PGD()(trained_jt, inputs, labels, ball).adversarial):
        torch.testing.assert_close(a, b)


def test_missing_modality_replaces_only_that_input():
    inputs = [torch.randn(2, 3), torch.randn(2, 4)]
    result = missing_modality(inputs, 1, fill=0.5)
    assert result[0] is inputs[0]
    assert torch.equal(result[1], torch.full((2, 4), 0.5))


def test_invalid_attack_settings_are_named():
    inputs = [torch.zeros(2, 3), torch.zeros(2, 4)]
    with pytest.raises(ValueError, match="steps"):
        L2PGD(steps=0)
    with pytest.raises(ValueError, match="budgets must be >= 0"):
        Ball.around(inputs, -1.0)
    with pytest.raises(ValueError, match="attacked"):
        Ball(torch.ones(2), torch.ones(2, 3, dtype=torch.bool), (None, None))
    with pytest.raises(ValueError, match="unknown attack loss"):
        APGD("hinge")
    with pytest.raises(ValueError, match="queries"):
        SquareL2(queries=0)
