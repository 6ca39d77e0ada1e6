"""CRMT-AT: CRMT whose step 1 trains on multi-modal l2-PGD examples (method.md §3, baselines.md §9.5).

tau~ estimation and step 2 use clean data, as in the paper.
"""

from __future__ import annotations

import torch

from crmt.strategies.adversarial import adversarial_batch, check_adversary_settings
from crmt.strategies.base import Batch
from crmt.strategies.crmt import CRMTJointTraining


class CRMTAdversarialTraining(CRMTJointTraining):
    """Step 1 minimises CE(h~(x_adv), y) + rho * L1(x_adv); step 2 as in CRMT-JT.

    Args (besides :class:`CRMTJointTraining`'s):
        at_eps: joint l2 budget of the training attack (0.1 in the CRMT code).
        at_steps / at_step_fraction: PGD steps and step size as a fraction of at_eps (5 and 1/5 there).
        at_random_start: start the attack at a random point of the ball.
    """

    def __init__(
        self,
        *,
        at_eps: float = 0.1,
        at_steps: int = 5,
        at_step_fraction: float = 0.2,
        at_random_start: bool = False,
        **kwargs,
    ) -> None:
        check_adversary_settings(at_eps, at_steps, at_step_fraction)
        super().__init__(**kwargs)

    def step1_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hp = self.hparams
        return super().step1_loss(
            adversarial_batch(self, batch, hp.at_eps, hp.at_steps, hp.at_step_fraction, hp.at_random_start)
        )
