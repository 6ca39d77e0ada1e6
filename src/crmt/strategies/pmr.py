"""PMR: prototypical modal rebalance (Fan et al., CVPR 2023; baselines.md §4).

Per modality, class prototypes (feature means) are recomputed before every training epoch
from about 10% of the training batches in evaluation mode and blended with the previous ones
by momentum. Inside the modulation window, the prototype cross-entropy (PCE, on negative
distances to the prototypes) of the modality with the lower prototype confidence is added to
the fused CE. The paper's prototypical entropy regularisation is not in the official code and
is not implemented (baselines.md §4.4).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from crmt.robustness.modes import eval_mode
from crmt.strategies.base import Batch
from crmt.strategies.jt import JointTraining

DISTANCE_EPSILON = 1e-8
"""Inside the square root of the squared distance, so its gradient stays finite at distance 0."""


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-||phi_i - P_k||_2 for features (B, D) and prototypes (K, D): (B, K)."""
    squared = (features[:, None, :] - prototypes[None, :, :]).pow(2).sum(dim=2)
    return -torch.sqrt(squared + DISTANCE_EPSILON)


def prototype_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """S_p = sum_i softmax(-d_i)[y_i] for prototype logits (B, K) and labels (B,): a scalar."""
    return logits.softmax(dim=1).gather(1, labels[:, None]).sum()


class PrototypicalModalRebalance(JointTraining):
    """JT + alpha * PCE of the weaker modality (lower prototype confidence) inside the modulation window.

    Args (besides :class:`MultiModalModule`'s):
        alpha: weight of the PCE term (1.0, the official default).
        momentum: P <- (1 - momentum) P_new + momentum P_old (0.2 officially); not applied to the first prototypes.
        prototype_fraction: fraction of the training batches (at least one) used per prototype update (0.1).
        modulation_starts / modulation_ends: 0-based epochs, both inclusive, with the PCE term (0 and 100).
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        momentum: float = 0.2,
        prototype_fraction: float = 0.1,
        modulation_starts: int = 0,
        modulation_ends: int = 100,
        **kwargs,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0 < prototype_fraction <= 1:
            raise ValueError(f"prototype_fraction must be in (0, 1], got {prototype_fraction}")
        if not 0 <= modulation_starts <= modulation_ends:
            raise ValueError(
                f"need 0 <= modulation_starts <= modulation_ends, got {modulation_starts} and {modulation_ends}"
            )
        super().__init__(**kwargs)
        for name, encoder in self.encoders.items():
            self.register_buffer(f"prototypes_{name}", torch.zeros(self.num_classes, encoder.out_dim))

    def prototypes(self, m: int) -> torch.Tensor:
        """P^(m): (K, D_m)."""
        return getattr(self, f"prototypes_{self.modalities[m]}")

    @torch.no_grad()
    def update_prototypes(self, batches: Iterable[Batch | None], momentum: float) -> None:
        """Class means of each modality's features over ``batches`` (evaluation mode), summed over
        every rank, then blended into the prototypes: P <- (1 - momentum) P_new + momentum P. Classes
        absent from the batches keep their previous prototype."""
        num_classes = self.num_classes
        sums = [torch.zeros_like(self.prototypes(m)) for m in range(len(self.modalities))]
        counts = torch.zeros(num_classes, device=self.device)
        with eval_mode(self):
            for batch in batches:
                if batch is None:
                    continue
                labels = batch["label"].to(self.device)
                for m, x in enumerate(self.inputs(batch)):
                    sums[m].index_add_(0, labels, self.encode_modality(m, x.to(self.device)))
                counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
        if self.trainer.world_size > 1:
            sums = [self.trainer.strategy.reduce(total, reduce_op="sum") for total in sums]
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        seen = counts > 0
        for m, total in enumerate(sums):
            prototypes = self.prototypes(m)
            means = total[seen] / counts[seen, None]
            prototypes[seen] = (1 - momentum) * means + momentum * prototypes[seen]

    def on_train_epoch_start(self) -> None:
        """Update the prototypes from the first batches; the first epoch's update (the first
        prototypes) takes the class means as they are."""
        loader = self.trainer.train_dataloader
        num_batches = max(1, math.floor(len(loader) * self.hparams.prototype_fraction))
        batches = (
            self.trainer.strategy.batch_to_device(batch, self.device) if batch is not None else None
            for batch in itertools.islice(loader, num_batches)
        )
        self.update_prototypes(batches, momentum=self.hparams.momentum if self.current_epoch > 0 else 0.0)

    def in_modulation_window(self) -> bool:
        return self.hparams.modulation_starts <= self.current_epoch <= self.hparams.modulation_ends

    def pmr_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE(h(x), y) + alpha * PCE^(w) for the weaker modality w (none outside the window or on a tie).

        Returns the loss and its parts: ``ce``, ``pce_<name>`` and ``confidence_<name>`` per
        modality, and ``weaker`` (the index w, or -1 when no PCE term was added).
        """
        labels = batch["label"]
        features = [self.encode_modality(m, x) for m, x in enumerate(self.inputs(batch))]
        ce = F.cross_entropy(self.fuse(features).logits, labels)
        pce, confidence = [], []
        for m, phi in enumerate(features):
            logits = prototype_logits(phi, self.prototypes(m))
            pce.append(F.cross_entropy(logits, labels))
            confidence.append(prototype_confidence(logits.detach(), labels))
        confidence_tensor = torch.stack(confidence)
        weaker = -1
        if self.in_modulation_window() and confidence_tensor.min() < confidence_tensor.max():
            weaker = int(confidence_tensor.argmin())
        loss = ce + self.hparams.alpha * pce[weaker] if weaker >= 0 else ce
        parts = {"ce": ce, "weaker": torch.tensor(float(weaker))}
        for name, term, score in zip(self.modalities, pce, confidence, strict=True):
            parts[f"pce_{name}"] = term
            parts[f"confidence_{name}"] = score
        return loss, parts

    def training_step(self, batch: Batch, batch_idx: int):
        loss, parts = self.pmr_loss(batch)
        self.log_train({"loss": loss, **parts}, batch)
        return loss
