"""MSEFM: MinSim + ExFMem (Tian & Xu, CVPR 2021; baselines.md §5).

Step 1 (epochs [0, step1_epochs)): joint training with CE + similarity_weight * mean cos(phi^(v), phi^(a))
(MinSim). At the switch (:class:`~crmt.strategies.phases.TwoStepTraining`: at the end of the last
step-1 epoch), once, a memory bank of ``memory_size`` training embeddings per modality is taken in
evaluation mode from the shuffled training loader (a random subset of the training set) and
stored as buffers. Step 2: the same loss, with every embedding replaced by the ExFMem blend
kappa * M^T H + (1 - kappa) * phi, H the ISTA sparse code of phi over the bank. The blend lives in
``encode_modality``, so training, evaluation and attacks (which differentiate through the unrolled
ISTA) all see it.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from crmt.robustness.modes import eval_mode
from crmt.strategies.base import Batch
from crmt.strategies.jt import JointTraining
from crmt.strategies.phases import TwoStepTraining


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """sign(x) * max(|x| - threshold, 0), element-wise."""
    return torch.sign(x) * torch.relu(x.abs() - threshold)


def ista_step_size(memory: torch.Tensor) -> torch.Tensor:
    """1 / lambda_max(M M^T) for a bank M (N, D): the ISTA step that guarantees convergence.

    Uses the smaller of the two Gram matrices (they share their nonzero eigenvalues).
    """
    gram = memory.T @ memory if memory.shape[0] > memory.shape[1] else memory @ memory.T
    largest = torch.linalg.eigvalsh(gram.double())[-1]
    if largest <= 0:
        raise ValueError("the memory bank is all zeros: ISTA has no step size")
    return (1.0 / largest).to(memory.dtype)


def ista_codes(
    features: torch.Tensor, memory: torch.Tensor, sparsity: float, step: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Sparse codes H (B, N) of features (B, D) over the bank rows (N, D) by ``iterations`` ISTA steps from H = 0:

    argmin_H 1/2 ||H M - phi||_F^2 + sparsity * ||H||_1, each step
    H <- soft_threshold(H - step (H M M^T - phi M^T), step * sparsity). Differentiable (unrolled).
    """
    gram = memory @ memory.T
    correlation = features @ memory.T
    codes = torch.zeros_like(correlation)
    for _ in range(iterations):
        codes = soft_threshold(codes - step * (codes @ gram - correlation), step * sparsity)
    return codes


def mean_pairwise_cosine(features: list[torch.Tensor]) -> torch.Tensor:
    """mean over samples and modality pairs m < m' of cos(phi^(m), phi^(m')): a scalar (MinSim)."""
    pairs = itertools.combinations(features, 2)
    return torch.stack([F.cosine_similarity(a, b, dim=1).mean() for a, b in pairs]).mean()


class MinSimExFMem(TwoStepTraining, JointTraining):
    """JT + MinSim, then ExFMem feature denoising (see the module docstring).

    Args (besides :class:`MultiModalModule`'s):
        similarity_weight: weight of the cosine term (1 in the official code).
        step1_epochs / step2_epochs: MinSim training, then ExFMem training; the CLI sets
            trainer.max_epochs to their sum.
        memory_size: K, training embeddings per bank (1024 officially); at most the training set size.
        sparsity: lambda of the l1 term of the sparse coding (0.1).
        ista_iterations: fixed number of ISTA steps (the official code stops at tolerance 8e-4
            or 2000 steps; a fixed count keeps the forward pass cheap and per-sample deterministic).
        kappa: weight of the reconstruction in the blend (0.5).
    """

    def __init__(
        self,
        *,
        similarity_weight: float = 1.0,
        step1_epochs: int = 1,
        step2_epochs: int = 1,
        memory_size: int = 1024,
        sparsity: float = 0.1,
        ista_iterations: int = 200,
        kappa: float = 0.5,
        **kwargs,
    ) -> None:
        if memory_size < 1 or ista_iterations < 1:
            raise ValueError(f"memory_size and ista_iterations must be >= 1, got {memory_size}, {ista_iterations}")
        if sparsity < 0:
            raise ValueError(f"sparsity must be >= 0, got {sparsity}")
        if not 0 <= kappa <= 1:
            raise ValueError(f"kappa must be in [0, 1], got {kappa}")
        super().__init__(**kwargs)
        dims = {encoder.out_dim for encoder in self.encoders.values()}
        if len(dims) != 1:
            raise ValueError(f"MinSim compares embeddings of equal size; the encoders give {sorted(dims)}")
        for name, encoder in self.encoders.items():
            self.register_buffer(f"memory_{name}", torch.zeros(memory_size, encoder.out_dim))
            self.register_buffer(f"ista_step_{name}", torch.tensor(0.0))
        self.init_phases(step1_epochs, step2_epochs)

    def memory(self, m: int) -> torch.Tensor:
        """The bank of modality m: (memory_size, D_m), one training embedding per row."""
        return getattr(self, f"memory_{self.modalities[m]}")

    def exfmem(self, m: int, features: torch.Tensor) -> torch.Tensor:
        """kappa * H M + (1 - kappa) * phi for features phi (B, D) of modality m: (B, D)."""
        memory = self.memory(m)
        step = getattr(self, f"ista_step_{self.modalities[m]}")
        codes = ista_codes(features, memory, self.hparams.sparsity, step, self.hparams.ista_iterations)
        return self.hparams.kappa * (codes @ memory) + (1 - self.hparams.kappa) * features

    def encode_modality(self, m: int, inputs: torch.Tensor) -> torch.Tensor:
        """phi^(m) in step 1; its ExFMem blend once the banks exist (B, D_m)."""
        features = super().encode_modality(m, inputs)
        return self.exfmem(m, features) if self.in_step2 else features

    def encoder_lipschitz_bound(self, m: int) -> float:
        if self.in_step2:
            raise NotImplementedError(
                "MinSimExFMem: no sound Lipschitz bound exists for the unrolled ISTA sparse coding of ExFMem; "
                "certify this model with estimated (empirical) Lipschitz constants only"
            )
        return super().encoder_lipschitz_bound(m)

    def minsim_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE(h(x), y) + similarity_weight * mean cos; returns the loss and its parts."""
        features = [self.encode_modality(m, x) for m, x in enumerate(self.inputs(batch))]
        ce = F.cross_entropy(self.fuse(features).logits, batch["label"])
        cosine = mean_pairwise_cosine(features)
        return ce + self.hparams.similarity_weight * cosine, {"ce": ce, "cosine": cosine}

    def training_step(self, batch: Batch, batch_idx: int):
        loss, parts = self.minsim_loss(batch)
        self.log_train({"loss": loss, **parts}, batch)
        return loss

    def enter_step2(self, last_step1_epoch: int) -> None:
        self.build_memory()
        rank_zero_info(
            f"MSEFM switch after epoch {last_step1_epoch}: memory banks of {self.hparams.memory_size} embeddings built"
        )

    @torch.no_grad()
    def build_memory(self) -> None:
        """Fill every bank with ``memory_size`` embeddings of shuffled training samples (evaluation
        mode), the same on every rank (each rank contributes an equal share), and set the ISTA steps."""
        world_size = self.trainer.world_size
        quota = math.ceil(self.hparams.memory_size / world_size)
        collected: list[list[torch.Tensor]] = [[] for _ in self.modalities]
        count = 0
        with eval_mode(self):
            for batch in self.trainer.train_dataloader:
                if count >= quota:
                    break
                if batch is None:
                    continue
                batch = self.trainer.strategy.batch_to_device(batch, self.device)
                for m, x in enumerate(self.inputs(batch)):
                    collected[m].append(super().encode_modality(m, x))
                count += batch["label"].shape[0]
        if count < quota:
            raise ValueError(
                f"memory_size={self.hparams.memory_size} needs {quota} training samples per rank, "
                f"but this rank's training loader has {count}; lower memory_size"
            )
        for m, name in enumerate(self.modalities):
            rows = torch.cat(collected[m])[:quota]
            if world_size > 1:
                rows = self.all_gather(rows).reshape(-1, rows.shape[1])
            memory = self.memory(m)
            memory.copy_(rows[: memory.shape[0]])
            getattr(self, f"ista_step_{name}").copy_(ista_step_size(memory))
