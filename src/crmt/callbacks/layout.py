"""``--trainer.callbacks+=crmt.callbacks.ChannelsLast``: train and evaluate in channels_last layout."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from crmt.models.layout import use_channels_last


class ChannelsLast(Callback):
    """Converts the module's ResNet18 trunks to channels_last (:func:`use_channels_last`) before the
    optimisers are built; checkpoints keep their values, so runs with and without it resume each other."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        trunks = use_channels_last(pl_module)
        rank_zero_info(f"channels_last: {trunks} convolutional trunk(s)")
