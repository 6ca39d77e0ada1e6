"""Couplings declared, not reached for: the model's pixel ranges come from the data module through the CLI's link
(and its checkpoint), and CRMT's step 2 turns the training inputs off through the data module's declared switch."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import LightningDataModule, seed_everything

from crmt.callbacks.robustness import _evaluator
from crmt.cli import main
from crmt.models.protocol import MediaSwitchable, PixelData, conforms, declared_pixel_normalization
from crmt.robustness.ball import PixelRange
from crmt.robustness.settings import RobustnessSettings
from crmt.strategies import CRMTJointTraining, JointTraining
from crmt.strategies import crmt as crmt_module
from crmt.strategies.adversarial import adversarial_batch
from data_modules import EmbeddedAVDataModule
from helpers import TensorAVDataModule, make_trainer
from test_cli import TINY_DATA

REPO = Path(__file__).resolve().parents[1]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Undeclared(LightningDataModule):
    """A data module that says nothing about pixels (only what the other links read)."""

    num_classes = 3
    input_shapes: ClassVar[dict[str, list[int]]] = {"visual": [3, 2, 16, 16], "audio": [1, 12, 16]}


def tiny_fit_args(tmp_path: Path) -> list[str]:
    return [
        *TINY_DATA,
        f"--data.init_args.root={tmp_path / 'data'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.encoder_width=4",
    ]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when sys.argv holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["crmt"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One epoch of JT on the tiny embedded data through the command line (no test after it): (cli, run folder)."""
    folder = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["crmt"])
        cli = main(["fit", "--config", str(REPO / "experiments" / "jt.yaml"), *tiny_fit_args(folder),
                    "--trainer.max_epochs=1", "--test_after_fit=false"])
    return cli, folder


def test_a_data_module_without_pixel_normalization_is_an_error_naming_it(tmp_path):
    assert conforms(EmbeddedAVDataModule(root=str(tmp_path)), PixelData)
    assert declared_pixel_normalization(EmbeddedAVDataModule(root=str(tmp_path))) == {"visual": IMAGENET}
    with pytest.raises(TypeError, match="helpers.TensorAVDataModule declares no pixel_normalization"):
        declared_pixel_normalization(TensorAVDataModule())
    with pytest.raises(ValueError, match="test_couplings.Undeclared declares no pixel_normalization"):
        main(["fit", "--config", str(REPO / "experiments" / "jt.yaml"), "--data=test_couplings.Undeclared",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.default_root_dir={tmp_path}"])


def test_the_model_gets_its_pixel_ranges_from_the_data_module_and_its_attacks_clamp_with_them(fitted, monkeypatch):
    cli, _ = fitted
    model, data = cli.model, cli.datamodule
    assert data.pixel_normalization == {"visual": IMAGENET}
    assert model.pixel_normalization == data.pixel_normalization
    assert model.hparams.pixel_normalization == {"visual": [list(IMAGENET[0]), list(IMAGENET[1])]}
    assert model.pixel_ranges == [PixelRange(*IMAGENET), None]
    assert list(_evaluator(cli.trainer, model, RobustnessSettings()).pixel_ranges) == model.pixel_ranges

    batch = data.normalize(next(iter(data.val_dataloader())))
    mean, std = (torch.tensor(values).view(1, 3, 1, 1, 1) for values in IMAGENET)

    def pixels(attacked):
        return attacked["visual"] * std + mean

    clamped = adversarial_batch(model, batch, eps=100.0, steps=3, step_fraction=1.0)
    assert not torch.equal(clamped["visual"], batch["visual"])
    assert pixels(clamped).min() >= -1e-5 and pixels(clamped).max() <= 1 + 1e-5
    monkeypatch.setattr(model, "pixel_ranges", [None, None])  # the control: the same attack, unclamped
    unclamped = pixels(adversarial_batch(model, batch, eps=100.0, steps=3, step_fraction=1.0))
    assert (unclamped < -1e-2).any() and (unclamped > 1 + 1e-2).any()


def test_checkpoints_keep_the_pixel_ranges_and_an_older_checkpoint_gets_them_from_the_link(fitted, tmp_path):
    cli, folder = fitted
    (checkpoint,) = (folder / "runs").rglob("last.ckpt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["pixel_normalization"] == {"visual": [list(IMAGENET[0]), list(IMAGENET[1])]}
    loaded = JointTraining.load_from_checkpoint(checkpoint)
    assert loaded.pixel_normalization == {"visual": IMAGENET} and loaded.pixel_ranges == cli.model.pixel_ranges

    # a checkpoint saved before the argument existed: loaded alone, no pixel modality (nothing clamped) ...
    del saved["hyper_parameters"]["pixel_normalization"]
    older = tmp_path / "older.ckpt"
    torch.save(saved, older)
    alone = JointTraining.load_from_checkpoint(older)
    assert alone.pixel_normalization is None and alone.pixel_ranges == [None, None]
    with pytest.warns(UserWarning, match="built with pixel_normalization=None but the data module"):
        make_trainer(1, tmp_path).validate(alone, datamodule=cli.datamodule, verbose=False)
    # ... and evaluated through the command line, the data module's ranges as before (the link builds the model)
    evaluated = main(["validate", "--config", str(REPO / "experiments" / "jt.yaml"), *tiny_fit_args(folder),
                      "--trainer.logger=false", f"--ckpt_path={older}"])
    assert evaluated.model.pixel_normalization == {"visual": IMAGENET}
    torch.testing.assert_close(evaluated.model.state_dict(), loaded.state_dict())


class SwitchableTensorData(TensorAVDataModule):
    """Records the media switches it is asked for, with the epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.switches: list[tuple[bool, int]] = []

    def set_training_media(self, enabled: bool) -> None:
        self.switches.append((enabled, self.trainer.current_epoch))


def crmt_model(data) -> CRMTJointTraining:
    seed_everything(0)
    return CRMTJointTraining(3, data.input_shapes, 4, partial(torch.optim.Adam, lr=1e-2), step1_epochs=1,
                             step2_epochs=2)


def test_crmt_turns_the_training_inputs_off_at_the_switch_and_on_at_the_end_through_the_data_module(tmp_path):
    data = SwitchableTensorData()
    assert conforms(data, MediaSwitchable) and not conforms(TensorAVDataModule(), MediaSwitchable)
    model = crmt_model(data)
    make_trainer(3, tmp_path).fit(model, datamodule=data)
    assert model.in_step2
    # off at the end of the last step-1 epoch (0), on again when training ends (the trainer's epoch is then 3)
    assert data.switches == [(False, 0), (True, 3)]


def test_a_data_module_without_the_switch_keeps_loading_and_says_so_once(tmp_path, monkeypatch):
    messages: list[str] = []
    monkeypatch.setattr(crmt_module, "rank_zero_info", messages.append)
    make_trainer(3, tmp_path).fit(crmt_model(TensorAVDataModule()), datamodule=TensorAVDataModule())
    said = [message for message in messages if "set_training_media" in message]
    assert len(said) == 1 and "the data module TensorAVDataModule has no set_training_media" in said[0]
