"""Training under Gaussian input noise (``noise_sigma``): the noise layer's distribution, where the noise
goes (training forward passes of the right modality only), bit-identical defaults, clean tau~ estimation."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import seed_everything

from crmt import strategies
from crmt.cli import main
from crmt.models.noise import GaussianInputNoise
from crmt.strategies import CRMTJointTraining, GradientBlending, JointTraining
from helpers import TensorAVDataModule, make_trainer

REPO = Path(__file__).resolve().parents[1]
SHAPES = TensorAVDataModule.input_shapes
Z = 5.0
"""Tolerance in standard errors of each sampled statistic (a false failure has probability < 1e-6)."""


def random_inputs(batch_size: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch_size, *shape, generator=generator) for shape in SHAPES.values()]


def check_gaussian(differences: torch.Tensor, sigma: float) -> None:
    """``differences`` look like i.i.d. N(0, sigma^2) draws: their mean, standard deviation and share within
    one sigma of 0 (0.6827 for a Gaussian, 0.577 for a uniform of the same variance) each within Z standard
    errors of a Gaussian's."""
    d = differences.double().flatten()
    n = d.numel()
    assert abs(d.mean().item()) <= Z * sigma / math.sqrt(n)
    assert abs(d.std().item() - sigma) <= Z * sigma / math.sqrt(2 * (n - 1))
    within = math.erf(1 / math.sqrt(2))
    assert abs((d.abs() < sigma).double().mean().item() - within) <= Z * math.sqrt(within * (1 - within) / n)


def recorded_encoder_inputs(model) -> list[torch.Tensor]:
    """A list that receives each encoder's input (in modality order of the calls) on every forward pass."""
    seen: list[torch.Tensor] = []
    for encoder in model.encoders.values():
        encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def test_noise_layer_adds_gaussian_noise_in_training_mode_and_nothing_in_eval_mode():
    torch.manual_seed(0)
    sigma = 0.7
    layer = GaussianInputNoise(sigma)
    inputs = 3 * torch.rand(64, 3, 2, 32, 32) - 1  # 393216 elements, not centred
    check_gaussian(layer(inputs) - inputs, sigma)
    assert not torch.equal(layer(inputs), layer(inputs)), "fresh noise on every call"

    layer.eval()
    state = torch.get_rng_state()
    assert torch.equal(layer(inputs), inputs)
    assert torch.equal(torch.get_rng_state(), state), "evaluation mode draws nothing"


@pytest.mark.parametrize(
    ("noise_sigma", "expected"),
    [
        (0.5, {"visual": 0.5, "audio": 0.5}),
        ({"audio": 0.5}, {"visual": 0.0, "audio": 0.5}),
        ({"visual": 0.3, "audio": 0.6}, {"visual": 0.3, "audio": 0.6}),
    ],
)
def test_each_modality_gets_its_own_sigma_in_training_forward_passes_only(noise_sigma, expected):
    torch.manual_seed(0)
    model = JointTraining(3, SHAPES, encoder_width=4, noise_sigma=noise_sigma)
    seen = recorded_encoder_inputs(model)
    inputs = random_inputs(batch_size=64)

    model.train()
    model(inputs)
    for name, x, received in zip(model.modalities, inputs, seen, strict=True):
        if expected[name] == 0:
            assert torch.equal(received, x), f"{name} has sigma 0 and must reach its encoder unchanged"
        else:
            check_gaussian(received - x, expected[name])

    seen.clear()
    model.eval()
    model(inputs)
    for x, received in zip(inputs, seen, strict=True):
        assert torch.equal(received, x), "evaluation sees clean inputs"


@pytest.mark.parametrize("noise_sigma", [0.0, {"visual": 0.0}, {}])
def test_zero_sigma_draws_no_random_numbers(noise_sigma):
    """With sigma 0 a training-mode forward leaves torch's RNG as it was (so default runs stay bit-identical);
    the same forward with sigma > 0 moves it (the check can fail)."""
    torch.manual_seed(0)
    inputs = random_inputs()
    quiet = JointTraining(3, SHAPES, encoder_width=4, noise_sigma=noise_sigma).train()
    noisy = JointTraining(3, SHAPES, encoder_width=4, noise_sigma=0.1).train()

    state = torch.get_rng_state()
    quiet(inputs)
    assert torch.equal(torch.get_rng_state(), state)
    noisy(inputs)
    assert not torch.equal(torch.get_rng_state(), state)


def crmt_model(noise_sigma: float) -> CRMTJointTraining:
    return CRMTJointTraining(
        num_classes=3,
        input_shapes=SHAPES,
        encoder_width=4,
        step1_epochs=1,
        step2_epochs=1,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
        noise_sigma=noise_sigma,
    )


def test_noise_changes_crmt_training_but_tau_is_estimated_on_clean_inputs(tmp_path, tensor_data):
    """One step-1 epoch under noise trains other weights than without; tau~ at the switch is still
    max_i ||d s_k^(m)(x_i) / d x_i^(m)||_2 over the clean training samples, recomputed here with plain
    autograd, one class at a time, through the encoders alone (no noise layer) in eval mode, where each
    sample's score depends on its own input only, so the gradient of the summed scores is per sample."""
    fitted = {}
    for sigma in (0.0, 0.5):
        seed_everything(0)
        fitted[sigma] = crmt_model(sigma)
        make_trainer(2, tmp_path).fit(fitted[sigma], datamodule=tensor_data)
    clean, noisy = fitted[0.0], fitted[0.5]
    pairs = zip(clean.encoders.parameters(), noisy.encoders.parameters(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs), "noise changes what step 1 learns"

    noisy.eval()
    weights = [w.detach() for w in noisy.head.modality_weights()]
    train_set = tensor_data.train_set
    expected = torch.zeros(len(noisy.modalities), noisy.num_classes)
    for m, (name, x) in enumerate([("visual", train_set.visual), ("audio", train_set.audio)]):
        for k in range(noisy.num_classes):
            x = x.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad((noisy.encoders[name](x) @ weights[m][k]).sum(), x)
            expected[m, k] = gradient.flatten(1).norm(dim=1).max()
    torch.testing.assert_close(noisy.tau, expected, rtol=1e-5, atol=1e-7)


def test_gradient_blending_forks_train_under_the_models_noise():
    """G-Blend's forked branches carry the model's input noise: each fork's encoder receives noisy inputs
    in training mode (the forks train as the model does) and clean ones in eval mode (their losses on V)."""
    torch.manual_seed(0)
    model = GradientBlending(num_classes=3, input_shapes=SHAPES, encoder_width=4, noise_sigma={"audio": 0.4})
    inputs = random_inputs(batch_size=64)
    for branch in model.branches():
        encoders = [branch.encoder] if hasattr(branch, "encoder") else list(branch.encoders)
        seen = []
        for encoder in encoders:
            encoder[-1].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        names = [model.modalities[branch.m]] if hasattr(branch, "m") else model.modalities
        for training in (True, False):
            seen.clear()
            branch.train(training)(inputs)
            for name, received in zip(names, seen, strict=True):
                x = inputs[model.modalities.index(name)]
                if training and name == "audio":
                    check_gaussian(received - x, 0.4)
                else:
                    assert torch.equal(received, x)


TINY_STRATEGY_ARGUMENTS = {"encoder_width": 4}
TINY_TRANSFORMER = {"embed_dim": 16, "stream_depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 4}


@pytest.mark.parametrize("name", [name for name in strategies.__all__ if name != "MultiModalModule"])
def test_every_strategy_takes_noise_sigma(name):
    strategy = getattr(strategies, name)
    extra = TINY_TRANSFORMER if "Transformer" in name else TINY_STRATEGY_ARGUMENTS
    model = strategy(num_classes=3, input_shapes=SHAPES, noise_sigma={"visual": 0.3}, **extra)
    assert {n: layer.sigma for n, layer in model.input_noise.items()} == {"visual": 0.3, "audio": 0.0}
    assert model.hparams.noise_sigma == {"visual": 0.3}


@pytest.mark.parametrize(
    ("noise_sigma", "message"),
    [
        (-0.1, r"noise_sigma must be finite and >= 0.*'visual': -0\.1"),
        (float("nan"), "noise_sigma must be finite"),
        ({"audio": -1.0}, r"noise_sigma must be finite and >= 0.*'audio': -1\.0"),
        ({"depth": 0.5, "audio": 0.1}, r"noise_sigma names unknown modalities \['depth'\].*\['visual', 'audio'\]"),
    ],
)
def test_invalid_noise_sigma_is_refused_naming_the_setting(noise_sigma, message):
    with pytest.raises(ValueError, match=message):
        JointTraining(3, SHAPES, encoder_width=4, noise_sigma=noise_sigma)


EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml") if p.stem != "defaults")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize(
    ("argument", "value"), [("0.5", 0.5), ("{visual: 0.5, audio: 0.25}", {"visual": 0.5, "audio": 0.25})]
)
def test_every_experiment_takes_noise_sigma_on_the_command_line(experiment, argument, value, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["crmt"])
    with pytest.raises(SystemExit) as exit_info:
        config = REPO / "experiments" / f"{experiment}.yaml"
        main(["fit", "--config", str(config), "--model.init_args.noise_sigma", argument, "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["noise_sigma"] == value


@pytest.mark.parametrize("experiment", ["jt", "crmt_jt"])
def test_noise_experiments_are_their_clean_experiment_with_noise(experiment):
    """experiments/<name>_noise.yaml repeats <name>.yaml and adds only ``noise_sigma`` and its logger name."""
    clean = yaml.safe_load((REPO / "experiments" / f"{experiment}.yaml").read_text())
    noisy = yaml.safe_load((REPO / "experiments" / f"{experiment}_noise.yaml").read_text())
    assert noisy["model"]["init_args"].pop("noise_sigma") > 0
    assert noisy["trainer"]["logger"]["init_args"].pop("name") == f"{experiment}_noise"
    clean["trainer"]["logger"]["init_args"].pop("name")
    assert noisy == clean
