"""bf16-mixed training: every strategy trains, and certificates stay float32 (tau~, step 2, radii)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from helpers import TensorAVDataModule, make_trainer, tau_by_hand
from crmt import strategies
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.threats import Scope

SHAPES = TensorAVDataModule.input_shapes
ADAM = partial(torch.optim.Adam, lr=1e-2)
STRATEGIES = {
    "jt": lambda: strategies.JointTraining(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM),
    "crmt_jt": lambda: strategies.CRMTJointTraining(3, SHAPES, 4, ADAM, step1_epochs=1, step2_epochs=1),
    "crmt_at": lambda: strategies.CRMTAdversarialTraining(
        num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, step1_epochs=1, step2_epochs=1, at_steps=2
    ),
    "gb": lambda: strategies.GradientBlending(
        num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, super_epoch=2, estimation_epochs=1
    ),
    "ogm": lambda: strategies.OGMGE(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM),
    "pmr": lambda: strategies.PrototypicalModalRebalance(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM),
    "msefm": lambda: strategies.MinSimExFMem(
        num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM, step1_epochs=1, step2_epochs=1,
        memory_size=8, ista_iterations=5,
    ),
    "mixup": lambda: strategies.MixupTraining(num_classes=3, input_shapes=SHAPES, encoder_width=4, optimizer=ADAM),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_trains_under_bf16_mixed_precision(strategy, tmp_path):
    seed_everything(0)
    model = STRATEGIES[strategy]()
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    trainer = make_trainer(2, tmp_path, precision="bf16-mixed")
    trainer.fit(model, datamodule=TensorAVDataModule())
    assert trainer.precision == "bf16-mixed"
    assert all(value.dtype == torch.float32 for value in model.parameters()), "mixed precision keeps float32 weights"
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters()), "nothing was trained"
    assert torch.isfinite(torch.cat([value.detach().flatten() for value in model.parameters()])).all()


def test_crmt_certificates_under_bf16_training_equal_the_float32_computation_on_the_same_weights(tmp_path):
    """tau~ of a bf16-mixed CRMT fit is the float32 per-sample maximum of the input-gradient norms
    (method.md §4) of its final encoders, and an evaluation run inside a bf16 autocast region gives
    the radii of the float32 evaluation bit for bit."""
    seed_everything(0)
    data = TensorAVDataModule()
    model = strategies.CRMTJointTraining(3, SHAPES, 4, ADAM, step1_epochs=2, step2_epochs=1)
    make_trainer(3, tmp_path, precision="bf16-mixed").fit(model, datamodule=data)
    assert model.in_step2 and model.tau.dtype == torch.float32

    torch.testing.assert_close(model.tau, tau_by_hand(model, data.train_set), rtol=1e-5, atol=1e-7)

    settings = RobustnessSettings(curve_radii=(), audit_samples=0, sound_certificate=False)

    def radii(autocast: bool) -> dict:
        evaluator = RobustnessEvaluator(model, settings)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for batch in data.val_dataloader():
                evaluator.update(model.inputs(batch), batch["label"], batch["index"])
            results = evaluator.finalize()
        return {"common": results.certified.radii, "own": results.certified_model.radii, "logits": results.logits}

    float32, under_autocast = radii(autocast=False), radii(autocast=True)
    assert float32["logits"].dtype == torch.float32
    for table in ("common", "own"):
        for scope in Scope.every(model.modalities):
            assert under_autocast[table][scope].dtype == torch.float32
            assert torch.equal(under_autocast[table][scope], float32[table][scope]), (table, scope)
    assert torch.equal(under_autocast["logits"], float32["logits"])
