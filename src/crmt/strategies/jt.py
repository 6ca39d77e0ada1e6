"""JT: joint training, concatenated features and one linear head, cross-entropy on the fused logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from crmt.models.heads import ConcatFusion
from crmt.strategies.base import Batch, MultiModalModule


class JointTraining(MultiModalModule):
    """Minimise CE(h(x), y) with h(x) = W [phi^(v); phi^(a)] + b."""

    def build_head(self, feature_dims: list[int], num_classes: int) -> nn.Module:
        return ConcatFusion(feature_dims, num_classes)

    def training_step(self, batch: Batch, batch_idx: int):
        output = self(self.inputs(batch))
        loss = F.cross_entropy(output.logits, batch["label"])
        self.log_train({"loss": loss}, batch)
        return loss
