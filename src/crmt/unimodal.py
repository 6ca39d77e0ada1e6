"""``python -m crmt.unimodal [--data NAME] [--seeds N]``: each modality's own test accuracy.

A uni-modal model per modality (the same ResNet18 encoder as the multi-modal strategies, a
linear classifier, Adam with JT's learning rate and epochs) is trained on the data of
``experiments/data/<NAME>.yaml`` (default: the embedded data), once per seed,
and tested on the test split. It says how much each modality alone can tell, which is what
a jointly trained model's missing-modality accuracies should be read against: a modality
that is informative alone but useless to the joint model is under-used (the paper's
modality imbalance).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import LightningDataModule, seed_everything
from torch import nn

from crmt.experiments import DEFAULT_DATA, data_config
from crmt.models.encoders import build_encoder
from data_modules.clips import MediaDataModule


def load_data_module(data: str | None, **overrides) -> LightningDataModule:
    """The data module of ``experiments/data/<data>.yaml`` (default: the embedded data) with ``overrides``
    of its init_args, typed as the training command line types it (``clip`` becomes its dataclass)."""
    config = yaml.safe_load(data_config(data or DEFAULT_DATA).read_text(encoding="utf-8"))["data"]
    config = {**config, "init_args": {**(config.get("init_args") or {}), **overrides}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": config})).data


def train_unimodal(
    data: MediaDataModule, modality: str, seed: int, epochs: int = 8, lr: float = 3e-3, width: int = 8
) -> float:
    """Test accuracy of an encoder + linear classifier trained on ``modality`` alone."""
    seed_everything(seed, workers=True)
    shape = data.input_shapes[modality]
    encoder = build_encoder(shape, width)
    model = nn.Sequential(encoder, nn.Linear(encoder.out_dim, data.num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = data.train_dataloader()
    for epoch in range(epochs):
        _set_sampler_epoch(loader, epoch)  # as the Trainer does: each epoch its own order and frame draws
        model.train()
        for batch in map(data.normalize, loader):
            loss = nn.functional.cross_entropy(model(batch[modality]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in map(data.normalize, data.test_dataloader()):
            correct += int((model(batch[modality]).argmax(dim=1) == batch["label"]).sum())
            total += int(batch["label"].shape[0])
    return correct / total


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="experiments/data/<NAME>.yaml (default: the embedded default)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (JT's)")
    parser.add_argument("--modalities", nargs="+", default=None, help="only these modalities (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the accuracies here as JSON")
    options = parser.parse_args(argv)
    accuracies: dict[str, list[float]] = {}
    for seed in range(options.seeds):
        data = load_data_module(options.data, seed=seed)
        data.prepare_data()
        data.setup("fit")
        data.setup("test")
        for modality in options.modalities or data.input_shapes:
            accuracies.setdefault(modality, []).append(train_unimodal(data, modality, seed, options.epochs))
    for modality, values in accuracies.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{modality}-only test accuracy over {len(values)} seeds: {statistics.mean(values):.3f} ± {spread:.3f} "
              f"({', '.join(f'{v:.3f}' for v in values)})")
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(accuracies, indent=2) + "\n", encoding="utf-8")
    return accuracies


if __name__ == "__main__":
    main()
