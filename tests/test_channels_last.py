"""channels_last layout: same values as the default layout, through a forward pass and a Trainer fit."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from lightning.pytorch import Trainer

from benchmarks import scale
from crmt.callbacks import ChannelsLast
from crmt.models.encoders import ResNet18Trunk
from crmt.models.layout import use_channels_last

SIZES = replace(scale.TINY, batch=4, batches=2)


def tiny_model_and_batches():
    torch.manual_seed(0)
    return scale.build_model(SIZES), scale.synthetic_batches(SIZES, torch.device("cpu"))


def test_trunks_convert_once_and_give_the_same_outputs():
    model, batches = tiny_model_and_batches()
    default = copy.deepcopy(model).eval()
    assert use_channels_last(model) == 2
    assert use_channels_last(model) == 2
    model.eval()
    for trunk in (module for module in model.modules() if isinstance(module, ResNet18Trunk)):
        assert len(trunk._forward_pre_hooks) == 1
        for name, weight in trunk.named_parameters():
            if weight.ndim == 4 and weight.shape[1] > 1 and weight.shape[2] > 1:
                assert weight.is_contiguous(memory_format=torch.channels_last), name
                assert not weight.is_contiguous(), name
    seen = []
    model.encoders["visual"].trunk.stem.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        for batch in batches:
            inputs = model.inputs(batch)
            torch.testing.assert_close(model(inputs).logits, default(inputs).logits, rtol=1e-5, atol=1e-5)
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in seen)


def fit(model, batches, callbacks) -> dict[str, torch.Tensor]:
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )
    trainer.fit(model, train_dataloaders=scale.Batches(batches))
    return {name: value.contiguous() for name, value in model.state_dict().items()}


def test_a_fit_with_the_callback_takes_the_same_steps():
    model, batches = tiny_model_and_batches()
    twin, initial = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    with_callback = fit(model, batches, [ChannelsLast()])
    without = fit(twin, batches, [])
    assert model.encoders["audio"].trunk.stages[0][0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    moved = (without["encoders.visual.trunk.stem.0.weight"] - initial["encoders.visual.trunk.stem.0.weight"]).abs()
    assert moved.max() > 1e-3
    # Adam's first steps are about lr * sign(gradient), so gradients that differ in the last bits
    # move a weight by up to ~2e-5 differently; a layout bug would move it by ~lr = 1e-3.
    for name, value in without.items():
        torch.testing.assert_close(with_callback[name], value, rtol=0, atol=1e-4, msg=name)
