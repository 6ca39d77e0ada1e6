"""CRMT-JT: the two-step certifiable robust multi-modal training of method.md §2-§3.

Step 1 (epochs [0, step1_epochs)): encoders, W~, a and b~ minimise CE + rho * L1.
At the switch, once, at the end of the last step-1 epoch: tau~_k^(m) is estimated over the
training set (max-reduced across ranks), or, with encoders that are Lipschitz-bounded by construction
(``encoder: lipschitz``), set to their sound bound L_m for every class (the rows of W~^(m) have norm 1, so
every tau_k^(m) <= L_m: step 2 then enlarges a guaranteed radius), and the frozen uni-modal scores of every training and
validation sample are cached (gathered from every rank); the checkpoint of that epoch holds
the switch. Step 2 (the remaining epochs): only a^(m) is updated, to maximise
the mean certified bound r_j of the runner-up class, from the cached scores; the encoders
never run in step 2, which reads only the training batches' ``index`` and ``label``: CRMT asks the
data module to leave the inputs out (:class:`~crmt.models.protocol.MediaSwitchable`, which the clip
data modules implement, so that their step-2 epochs decode nothing) and to load them again when
training ends. After each step-2 epoch the validation scores give the mean certified radius of the
current a^(m); the model ends with the a^(m) of the best such epoch (the
switch's a^(m) included) among those whose validation accuracy is not below the switch's
(``step2_selection="best_val"``): step 2 may raise the certified bound but never at the cost
of clean accuracy, and the test split is never looked at. The phase, tau~, a^(m), the
selection state and the epoch whose training samples were scored live in the state dict, so a
checkpoint resumes in the right phase and a run resumed in step 2 rebuilds the same cache.
The phases follow :class:`~crmt.strategies.phases.TwoStepTraining`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from crmt.distributed import gather_rows
from crmt.losses import margin_regularizer
from crmt.models.encoders import EncoderKind
from crmt.models.heads import OrthogonalFusion, integrate_scores
from crmt.models.protocol import MediaSwitchable, PixelNormalization, conforms
from crmt.robustness.certificates import LipschitzEstimator, score_function
from crmt.robustness.certify import certified_radius, orthogonal_pair_lipschitz, round_up_float32, runner_up_bound
from crmt.robustness.lipschitz import GradientMethod
from crmt.robustness.modes import eval_mode, float32_math
from crmt.strategies.base import Batch, MultiModalModule
from crmt.strategies.phases import TwoStepTraining


@dataclass
class ScoreCache:
    """Frozen uni-modal scores of the training set, addressed by dataset index.

    scores: (M, N, K); labels: (N,); present: (N,) bool, True where index n was seen.
    """

    scores: torch.Tensor
    labels: torch.Tensor
    present: torch.Tensor


class CRMTJointTraining(TwoStepTraining, MultiModalModule):
    """CRMT on clean inputs (CRMT-JT).

    Args (besides :class:`MultiModalModule`'s):
        rho: weight of the uni-modal margin regulariser L1 in step 1 (2.0 in the paper's code).
        step1_epochs / step2_epochs: length of each step; the CLI sets trainer.max_epochs to their sum.
        step2_optimizer: optimiser factory for the integration weights a^(m) in step 2.
        init_integration: initial value of every a_k^(m) (0.1, the official code's).
        tau_method: "loop" (K backward passes over one retained graph) or "batched" (one vmapped backward).
        step2_selection: "best_val" keeps the a^(m) of the step-2 epoch (or the switch) with the largest
            mean certified radius on the validation split among those that keep its accuracy at least at
            the switch's; "last" keeps the final a^(m). Without validation data "best_val" acts as "last".
    """

    factory_arguments = (*MultiModalModule.factory_arguments, "step2_optimizer")

    def __init__(
        self,
        num_classes: int,
        input_shapes: dict[str, list[int]] | None = None,
        encoder_width: int = 64,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        rho: float = 2.0,
        step1_epochs: int = 1,
        step2_epochs: int = 1,
        step2_optimizer: OptimizerCallable = torch.optim.Adam,
        init_integration: float = 0.1,
        tau_method: GradientMethod = "loop",
        step2_selection: Literal["best_val", "last"] = "best_val",
        noise_sigma: float | dict[str, float] = 0.0,
        pixel_normalization: PixelNormalization | None = None,
        encoder: EncoderKind = "resnet18",
    ) -> None:
        if step2_selection not in ("best_val", "last"):
            raise ValueError(f"step2_selection must be 'best_val' or 'last', got {step2_selection!r}")
        super().__init__(
            num_classes, input_shapes, encoder_width, optimizer, lr_scheduler, noise_sigma, pixel_normalization, encoder
        )
        self.automatic_optimization = False
        self.step2_optimizer_factory = step2_optimizer
        self.init_phases(step1_epochs, step2_epochs)
        self.register_buffer("tau", torch.zeros(len(self.modalities), num_classes))
        self.register_buffer("best_integration", self.head.integration.detach().clone())
        self.register_buffer("best_val_radius", torch.tensor(float("-inf")))
        self.register_buffer("switch_val_accuracy", torch.tensor(0.0))
        self.register_buffer("best_step2_epoch", torch.tensor(-1))
        self.score_cache: ScoreCache | None = None
        self.val_cache: ScoreCache | None = None

    def build_head(self, feature_dims: list[int], num_classes: int) -> nn.Module:
        return OrthogonalFusion(feature_dims, num_classes, self.hparams.init_integration)

    def configure_optimizers(self):
        step1 = self.optimizer_factory(self.parameters())
        step2 = self.step2_optimizer_factory([self.head.integration])
        if self.scheduler_factory is None:
            return [step1, step2]
        return [step1, step2], [self.scheduler_factory(step1)]

    # ----------------------------------------------------------------- step 1
    def step1_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE(h~(x), y) + rho * L1 on the batch; returns the loss and its parts for logging."""
        output = self(self.inputs(batch))
        ce = F.cross_entropy(output.logits, batch["label"])
        margin = margin_regularizer(output.scores, batch["label"])
        return ce + self.hparams.rho * margin, {"ce": ce, "margin": margin}

    def _step1_update(self, batch: Batch) -> None:
        optimizer = self.optimizers()[0]
        loss, parts = self.step1_loss(batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log_train({"loss": loss, **parts}, batch)

    # ----------------------------------------------------------------- switch
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.in_step2 and self.score_cache is None:  # resumed in step 2: the switch's scores again
            loader = self.trainer.train_dataloader
            _set_sampler_epoch(loader, int(self.switch_epoch))
            self.score_cache, _ = self._collect_scores(loader, estimate_tau=False)
            _set_sampler_epoch(loader, self.current_epoch)
            self.val_cache = self._collect_validation_scores()
            self._set_training_media(False)

    @property
    def tau_is_sound(self) -> bool:
        """Whether tau holds the encoders' sound Lipschitz bounds rather than the paper's estimate."""
        return self.encoders_bounded_by_construction

    def sound_tau(self) -> torch.Tensor:
        """tau (M, K): each encoder's sound bound L_m for every class, rounded up to float32."""
        bounds = torch.tensor([self.encoder_lipschitz_bound(m) for m in range(len(self.modalities))], dtype=torch.float64)
        return round_up_float32(bounds)[:, None].expand_as(self.tau).to(self.tau.device)

    def enter_step2(self, last_step1_epoch: int) -> None:
        """Estimate tau~ (or take the encoders' sound bounds), cache the training and validation scores (method.md §3)."""
        start = time.perf_counter()
        self._use_rank_zero_buffers()
        estimate = not self.tau_is_sound
        self.score_cache, tau = self._collect_scores(self.trainer.train_dataloader, estimate_tau=estimate)
        self.tau.copy_(tau if estimate else self.sound_tau())
        self.val_cache = self._collect_validation_scores()
        self._start_selection(last_step1_epoch)
        self._set_training_media(False)
        rank_zero_info(
            f"CRMT phase switch after epoch {last_step1_epoch} (step 2 starts at epoch {last_step1_epoch + 1}): "
            f"{'tau~ estimated' if estimate else 'tau set to the sound bounds of the encoders'} and scores of {int(self.score_cache.present.sum())} training clips (and the "
            f"validation clips') cached in {time.perf_counter() - start:.1f} s"
        )

    def on_train_end(self) -> None:
        if self.in_step2:  # leave the data module as found: a later fit or pass reads the inputs again
            self._set_training_media(True)

    def _set_training_media(self, enabled: bool) -> None:
        """Ask the data module to leave the training samples' inputs out (``enabled=False``: step 2 reads only
        ``index`` and ``label``, so its epochs decode nothing) or to load them again, through its declared
        switch (:class:`~crmt.models.protocol.MediaSwitchable`). A data module without one keeps loading
        them; switching off says so once."""
        datamodule = self.trainer.datamodule
        if conforms(datamodule, MediaSwitchable):
            datamodule.set_training_media(enabled)
        elif not enabled:
            source = "no data module" if datamodule is None else f"the data module {type(datamodule).__name__}"
            rank_zero_info(
                f"CRMT step 2 reads only the training batches' index and label, but {source} has no "
                "set_training_media (crmt.models.protocol.MediaSwitchable): its training batches keep loading "
                "their inputs"
            )

    def _use_rank_zero_buffers(self) -> None:
        """Give every DDP rank rank 0's buffers (BatchNorm running statistics), the ones checkpoints hold.

        Each rank updates its running statistics with its own batches, and DDP re-broadcasts rank
        0's only at the next training forward; without this, ranks would score their shards at the
        switch with different statistics, and a run resumed in step 2 would rebuild other scores.
        """
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.buffers():
                torch.distributed.broadcast(buffer, src=0)

    @torch.no_grad()
    def _collect_scores(self, loader: Iterable[Batch | None], estimate_tau: bool) -> tuple[ScoreCache, torch.Tensor]:
        """One eval-mode pass over this rank's shard of ``loader``: scores of every sample and, optionally, tau~.

        Returns the cache of all ranks' scores and tau~ (M, K) max-reduced across ranks
        (zeros when not estimated).
        """
        estimator = LipschitzEstimator(self, self.hparams.tau_method) if estimate_tau else None
        score_fns = [score_function(self, m) for m in range(len(self.modalities))]  # the head's W~, read once
        scores, labels, indices = [], [], []
        with eval_mode(self), float32_math():
            for batch in loader:
                if batch is None:
                    continue
                batch = self._to_device(batch)
                inputs = self.inputs(batch)
                if estimator is not None:
                    batch_scores = estimator.scores(inputs)
                else:
                    batch_scores = torch.stack([score_fn(x) for score_fn, x in zip(score_fns, inputs, strict=True)])
                scores.append(batch_scores.transpose(0, 1))
                labels.append(batch["label"])
                indices.append(batch["index"])
        tau = torch.zeros_like(self.tau)
        if estimator is not None:
            reduce_max = (lambda t: self.trainer.strategy.reduce(t, reduce_op="max")) if self.trainer.world_size > 1 else None
            tau = estimator.class_lipschitz(reduce_max)
        cache = _build_cache(
            self._gather_rows(torch.cat(scores)), self._gather_rows(torch.cat(labels)), self._gather_rows(torch.cat(indices))
        )
        return cache, tau

    def _collect_validation_scores(self) -> ScoreCache | None:
        """Scores of the validation split (``None`` without validation data or with ``step2_selection="last"``)."""
        loaders = self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if self.hparams.step2_selection != "best_val" or loader is None or len(loader) == 0:
            return None
        return self._collect_scores(loader, estimate_tau=False)[0]

    def _to_device(self, batch: Batch) -> Batch:
        return self.trainer.strategy.batch_to_device(batch, self.device)

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order (see :func:`crmt.distributed.gather_rows`)."""
        return gather_rows(self.all_gather if self.trainer.world_size > 1 else None, rows)

    # ----------------------------------------------------------------- step-2 selection
    def validation_certificate(self, integration: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean certified radius) of the cached validation scores under integration weights (M, K)."""
        assert self.val_cache is not None
        return cached_certificate(self.val_cache, integration, self.head.bias.detach(), self.tau)

    def _start_selection(self, last_step1_epoch: int) -> None:
        """The switch's a^(m) is the first candidate; its validation accuracy is the floor."""
        if self.val_cache is None:
            return
        accuracy, radius = self.validation_certificate(self.head.integration.detach())
        self.best_integration.copy_(self.head.integration.detach())
        self.best_step2_epoch.fill_(last_step1_epoch)
        self.switch_val_accuracy.fill_(accuracy)
        self.best_val_radius.fill_(radius)

    def on_step2_epoch_end(self) -> None:
        self._select_step2_epoch()

    def _select_step2_epoch(self) -> None:
        """After a step-2 epoch: remember its a^(m) if it is the best so far; at the last epoch, keep the best."""
        if self.val_cache is None:
            return
        current = self.head.integration.detach()
        accuracy, radius = self.validation_certificate(current)
        self.log_dict({"val/step2_acc": accuracy, "val/step2_radius": radius}, rank_zero_only=True)
        if accuracy >= float(self.switch_val_accuracy) and radius > float(self.best_val_radius):
            self.best_integration.copy_(current)
            self.best_val_radius.fill_(radius)
            self.best_step2_epoch.fill_(self.current_epoch)
        if self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs:
            with torch.no_grad():
                self.head.integration.copy_(self.best_integration)
            rank_zero_info(
                f"CRMT step 2: keeping the integration weights of epoch {int(self.best_step2_epoch)} "
                f"(validation mean certified radius {float(self.best_val_radius):.4f}, accuracy not below "
                f"the switch's {float(self.switch_val_accuracy):.4f})"
            )

    # ----------------------------------------------------------------- step 2
    def step2_loss(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-mean_i r_{j_i}(x_i): the negated mean certified bound against the runner-up class of the
        cached training rows ``index`` (B,), a function of the integration weights a^(m) only
        (method.md §3, step 2; Theorem 3.5). Returns the loss and its parts for logging."""
        assert self.score_cache is not None, "step 2 runs after the phase switch, which fills the score cache"
        head = self.head
        bound = cached_runner_up_bound(self.score_cache, index, head.integration, head.bias.detach(), self.tau)
        return -bound.mean(), {"step2_bound": bound.mean()}

    def _step2_update(self, batch: Batch) -> None:
        optimizer = self.optimizers()[1]
        index = batch["index"].to(self.tau.device)
        index = index[self.score_cache.present[index]]  # a clip that failed to decode at the switch has no scores
        if index.numel() == 0:  # still take part in the gradient's all-reduce
            grad, parts = torch.zeros_like(self.head.integration), {}
        else:
            with float32_math():
                loss, parts = self.step2_loss(index)
                (grad,) = torch.autograd.grad(loss, self.head.integration)
        if self.trainer.world_size > 1:
            grad = self.trainer.strategy.reduce(grad, reduce_op="mean")
        optimizer.zero_grad()
        self.head.integration.grad = grad
        optimizer.step()
        optimizer.zero_grad()
        self.log_train(parts, batch, prog_bar=("step2_bound",))

    # ----------------------------------------------------------------- common
    def training_step(self, batch: Batch, batch_idx: int) -> None:
        if self.in_step2:
            self._step2_update(batch)
        else:
            self._step1_update(batch)

    def on_step1_epoch_end(self) -> None:
        """Manual optimisation: the step-1 scheduler steps here, once per step-1 epoch only."""
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def known_pair_lipschitz(self) -> torch.Tensor | None:
        """The pair Lipschitz table (M, K, K) from tau~ of the phase switch; ``None`` before step 2."""
        if not self.in_step2:
            return None
        return orthogonal_pair_lipschitz(self.head.integration.detach(), self.tau)

    def log_extra_metrics(self, output, batch: Batch, stage: str) -> None:
        """``<stage>/certified_radius``: the mean radius from tau~ of the step's logits (under mixed precision
        those of the reduced-precision forward, the radius arithmetic in float32; the report's are float32)."""
        pair_lipschitz = self.known_pair_lipschitz()
        if pair_lipschitz is None:
            return
        with float32_math():
            radius = certified_radius(output.logits.float(), batch["label"], pair_lipschitz)
        self.log(f"{stage}/certified_radius", radius.mean(), batch_size=radius.shape[0], sync_dist=True)


def cached_runner_up_bound(
    cache: ScoreCache, index: torch.Tensor, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """Step 2's bound r_{j_i}(x_i) (B,) of the cached rows ``index`` (B,) against their runner-up class
    (Theorem 3.5) under integration weights (M, K), bias (K,) and tau~ (M, K); step 2 minimises its negated mean."""
    return runner_up_bound(cache.scores[:, index], integration, bias, tau, cache.labels[index])


@torch.no_grad()
def cached_certificate(
    cache: ScoreCache, integration: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor
) -> tuple[float, float]:
    """(accuracy, mean certified radius) of the cached samples under integration weights (M, K), bias (K,)
    and tau~ (M, K): logits h~ = sum_m a^(m) s^(m) + b~, radius min_j r_j (Theorem 3.5; 0 if misclassified)."""
    scores, labels = cache.scores[:, cache.present], cache.labels[cache.present]
    logits = integrate_scores(integration, scores, bias)
    radius = certified_radius(logits, labels, orthogonal_pair_lipschitz(integration, tau))
    return (logits.argmax(dim=1) == labels).float().mean().item(), radius.mean().item()


def _build_cache(scores: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> ScoreCache:
    """Dense cache from gathered rows: scores (N_rows, M, K), labels and dataset indices (N_rows,)."""
    size = int(indices.max()) + 1
    dense = scores.new_zeros((scores.shape[1], size, scores.shape[2]))
    dense[:, indices] = scores.transpose(0, 1)
    dense_labels = labels.new_zeros(size)
    dense_labels[indices] = labels
    present = torch.zeros(size, dtype=torch.bool, device=scores.device)
    present[indices] = True
    return ScoreCache(scores=dense, labels=dense_labels, present=present)
