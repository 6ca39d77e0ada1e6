"""CRMT's phase switch and step 2 under 2-process DDP (gloo, CPU) against a single process on the same weights.

The DDP run trains step 1 for one epoch, then switches: each rank scores its half of the training and
validation sets with rank 0's BatchNorm statistics, tau~ is max-reduced and the scores gathered by
dataset index. A single process given rank 0's weights just before that switch, with ``step1_epochs=0``,
switches at once on the whole sets. Scoring is per sample in eval mode, so tau~ (a max over the same
samples) and the caches must agree to float tolerance. Step 2 then runs full-batch epochs in both
(one batch of 12 per rank, one of 24 in the single process): the DDP gradient, the mean of the two ranks'
mean gradients over 12 samples, is the single process's mean over 24, so a^(m) after each Adam step,
the validation selection and the kept a^(m) must agree too.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from crmt.strategies import CRMTJointTraining
from helpers import TensorAVDataModule, make_trainer


def make_model(step1_epochs: int) -> CRMTJointTraining:
    return CRMTJointTraining(
        num_classes=3,
        input_shapes=TensorAVDataModule.input_shapes,
        encoder_width=4,
        step1_epochs=step1_epochs,
        step2_epochs=2,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
        step2_optimizer=partial(torch.optim.Adam, lr=5e-2),
    )


class DumpSwitchAndCache(Callback):
    """Each rank saves to ``folder/rank<r>.pt`` its state just before the switch (callbacks run before the
    module's epoch-end hook, which switches) and, at the end of fit, its tau~, a^(m) and score caches."""

    def __init__(self, folder: Path, last_step1_epoch: int) -> None:
        self.folder = folder
        self.last_step1_epoch = last_step1_epoch
        self.dump: dict = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.last_step1_epoch:
            self.dump["before_switch"] = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        self.dump.update(final_state(pl_module))
        torch.save(self.dump, self.folder / f"rank{trainer.global_rank}.pt")


def final_state(model: CRMTJointTraining) -> dict[str, torch.Tensor]:
    return {
        "tau": model.tau.clone(),
        "integration": model.head.integration.detach().clone(),
        "best_step2_epoch": model.best_step2_epoch.clone(),
        "best_val_radius": model.best_val_radius.clone(),
        "switch_val_accuracy": model.switch_val_accuracy.clone(),
        "train_scores": model.score_cache.scores[:, model.score_cache.present],
        "train_labels": model.score_cache.labels[model.score_cache.present],
        "val_scores": model.val_cache.scores[:, model.val_cache.present],
    }


def test_two_process_ddp_switch_and_step2_equal_a_single_process_on_the_same_weights(tmp_path):
    seed_everything(0)
    dump = DumpSwitchAndCache(tmp_path, last_step1_epoch=0)
    Trainer(
        max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[dump],
        default_root_dir=tmp_path,
    ).fit(make_model(step1_epochs=1), datamodule=TensorAVDataModule(batch_size=12))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    seed_everything(0)
    single = make_model(step1_epochs=0)
    single.load_state_dict(ranks[0]["before_switch"])
    make_trainer(2, tmp_path).fit(single, datamodule=TensorAVDataModule(batch_size=24))
    reference = final_state(single)

    assert reference["train_scores"].shape[1] == 24 and reference["val_scores"].shape[1] == 12
    assert not torch.equal(reference["integration"], ranks[0]["before_switch"]["head.integration"]), "step 2 moved a"
    for rank in ranks:
        assert int(rank["best_step2_epoch"]) == int(reference["best_step2_epoch"]) + 1  # the DDP run switched 1 epoch later
        assert torch.equal(rank["train_labels"], reference["train_labels"])
        assert float(rank["switch_val_accuracy"]) == float(reference["switch_val_accuracy"])
        for name in ("tau", "train_scores", "val_scores", "integration", "best_val_radius"):
            torch.testing.assert_close(rank[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
