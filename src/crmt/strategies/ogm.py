"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022; baselines.md §3).

Joint training whose encoder gradients are modulated between backward and the optimiser step
(``on_before_optimizer_step``, after AMP unscaling and before gradient clipping): the dominant
modality's conv-weight gradients are scaled by 1 - tanh(alpha * ratio), and (GE) every modality's
conv-weight gradients get Gaussian noise with the standard deviation of the unmodulated gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crmt.seeding import step_generator
from crmt.strategies.base import Batch
from crmt.strategies.jt import JointTraining

NOISE_STD_FLOOR = 1e-8
"""Added to the gradient's std before drawing the GE noise, as in the official code."""


def uni_modal_confidence(scores: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """S^(m) = sum_i softmax(s^(m)_i)[y_i] with s^(m) = W^(m) phi^(m) + b / M (baselines.md §0.2).

    scores: (M, B, K) head-split scores without bias; bias: (K,); labels: (B,). Returns (M,).
    """
    logits = scores + bias / scores.shape[0]
    probabilities = logits.softmax(dim=2)
    return probabilities.gather(2, labels.view(1, -1, 1).expand(scores.shape[0], -1, 1)).sum(dim=(1, 2))


def modulation_coefficients(confidence: torch.Tensor, alpha: float) -> torch.Tensor:
    """k^(m) = 1 - tanh(alpha * S^(m) / max_{m' != m} S^(m')) for the strictly dominant modality, 1 otherwise.

    confidence: (M,) positive. With two modalities this is the official rule: the modality whose
    ratio S^(m) / S^(other) exceeds 1 is slowed down. Returns (M,).
    """
    others = torch.stack([torch.cat([confidence[:m], confidence[m + 1 :]]).max() for m in range(confidence.shape[0])])
    ratio = confidence / others.clamp_min(torch.finfo(confidence.dtype).tiny)
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


class OGMGE(JointTraining):
    """JT with OGM(-GE) gradient modulation of the encoders' 4-D (conv) weight gradients.

    Args (besides :class:`MultiModalModule`'s):
        alpha: modulation strength (0.1 in the official README command).
        modulation_starts / modulation_ends: the 0-based epochs, both inclusive, in which the
            gradients are modulated (0 and 50 officially); outside it the step is plain JT.
        ogm_ge: add the generalisation-enhancement noise (OGM-GE); False gives plain OGM.
        seed: seeds the noise together with the global step, identically on every rank.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        modulation_starts: int = 0,
        modulation_ends: int = 50,
        ogm_ge: bool = True,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0 <= modulation_starts <= modulation_ends:
            raise ValueError(
                f"need 0 <= modulation_starts <= modulation_ends, got {modulation_starts} and {modulation_ends}"
            )
        super().__init__(**kwargs)
        self.register_buffer("coefficients", torch.ones(len(self.modalities)), persistent=False)

    def in_modulation_window(self) -> bool:
        return self.hparams.modulation_starts <= self.current_epoch <= self.hparams.modulation_ends

    def training_step(self, batch: Batch, batch_idx: int):
        labels = batch["label"]
        output = self(self.inputs(batch))
        loss = F.cross_entropy(output.logits, labels)
        with torch.no_grad():
            confidence = uni_modal_confidence(output.scores, self.head.bias, labels)
            if self.trainer.world_size > 1:  # the ratio of the global batch, so every rank modulates alike
                confidence = self.trainer.strategy.reduce(confidence, reduce_op="sum")
            self.coefficients.copy_(modulation_coefficients(confidence, self.hparams.alpha))
        self.log_train(
            {
                "loss": loss,
                **{f"coefficient_{name}": k for name, k in zip(self.modalities, self.coefficients, strict=True)},
            },
            batch,
        )
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self.in_modulation_window():
            return
        generator = step_generator(self.hparams.seed, self.global_step, self.device) if self.hparams.ogm_ge else None
        for name, coefficient in zip(self.modalities, self.coefficients, strict=True):
            for parameter in self.encoders[name].parameters():
                if parameter.grad is not None and parameter.grad.dim() == 4:
                    modulate_gradient(parameter.grad, coefficient, generator)


def modulate_gradient(grad: torch.Tensor, coefficient: torch.Tensor, generator: torch.Generator | None) -> None:
    """In place: grad <- k * grad, plus (when ``generator`` is given) N(0, (std(grad) + 1e-8)^2) noise,
    with the std of the unmodulated gradient over all of its elements."""
    noise_std = grad.std() + NOISE_STD_FLOOR if generator is not None else None
    grad.mul_(coefficient)
    if noise_std is not None:
        grad.add_(torch.randn(grad.shape, generator=generator, device=grad.device, dtype=grad.dtype) * noise_std)
