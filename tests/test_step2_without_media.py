"""CRMT's step 2 reads no media: at the switch it asks the data module (``set_training_media``, the data module's
side of :class:`crmt.models.protocol.MediaSwitchable`) to leave the inputs out, and the training loader yields only
indices and labels."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from helpers import make_trainer
from crmt.strategies import CRMTJointTraining
from data_modules import ClipDataModule, ClipSettings, EmbeddedDatasetSpec
from data_modules.synthetic import generate_embedded_dataset

SMALL_CLIP = ClipSettings(audio_frames=50, frame_size=32, fps=None, augment=True)
"""Small inputs, with the random training draws on, so that a changed order of draws would show."""


class BatchKeys(Callback):
    """The keys of every training batch, per epoch."""

    def __init__(self) -> None:
        self.keys: dict[int, set[tuple[str, ...]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.setdefault(trainer.current_epoch, set()).add(tuple(sorted(batch)))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("embedded")
    generate_embedded_dataset(root, EmbeddedDatasetSpec(num_classes=3, train_per_class=4, val_per_class=2, test_per_class=1))
    return str(root / "manifest.csv")


def fit(manifest: str, tmp_path, workers: int, callbacks=(), persistent: bool = False) -> CRMTJointTraining:
    seed_everything(0)
    data = ClipDataModule(
        manifest, num_classes=3, clip=SMALL_CLIP, batch_size=4, num_workers=workers, persistent_workers=persistent
    )
    data.setup("fit")
    model = CRMTJointTraining(
        3, data.input_shapes, 4, partial(torch.optim.Adam, lr=1e-2), step1_epochs=2, step2_epochs=2,
        step2_optimizer=partial(torch.optim.Adam, lr=5e-2),
    )
    make_trainer(4, tmp_path, list(callbacks)).fit(model, datamodule=data)
    return model


@pytest.mark.parametrize("workers", [0, 2])
def test_step2_epochs_load_no_inputs_and_train_as_the_epochs_that_decoded_them(manifest, tmp_path, monkeypatch, workers):
    keys = BatchKeys()
    switches = []
    switch = ClipDataModule.set_training_media

    def recorded(data, enabled):
        switches.append((enabled, data.trainer.current_epoch, data.datasets["train"].media))
        switch(data, enabled)

    monkeypatch.setattr(ClipDataModule, "set_training_media", recorded)
    model = fit(manifest, tmp_path / "indices", workers, [keys])
    inputs = ("audio", "index", "label", "visual")
    assert keys.keys == {0: {inputs}, 1: {inputs}, 2: {("index", "label")}, 3: {("index", "label")}}
    # asked through the data module: off after the last step-1 epoch, on again when training ends (epoch 4 then)
    assert switches == [(False, 1, True), (True, 4, False)]
    assert model.trainer.datamodule.datasets["train"].media, "the data module is left as found"

    monkeypatch.setattr(ClipDataModule, "set_training_media", lambda data, enabled: None)  # no switch: step 2 decodes
    decoding = fit(manifest, tmp_path / "media", workers)
    for name, value in decoding.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_persistent_workers_see_the_switch_and_train_as_the_main_process_does(manifest, tmp_path):
    """Workers kept alive across epochs (and across the switch's own pass over the training loader)
    stop loading inputs at step 2 and give the weights of a run that loads in the main process."""
    keys = BatchKeys()
    persistent = fit(manifest, tmp_path / "persistent", 2, [keys], persistent=True)
    inputs = ("audio", "index", "label", "visual")
    assert keys.keys == {0: {inputs}, 1: {inputs}, 2: {("index", "label")}, 3: {("index", "label")}}
    main_process = fit(manifest, tmp_path / "main", 0)
    for name, value in main_process.state_dict().items():
        assert torch.equal(persistent.state_dict()[name], value), name
