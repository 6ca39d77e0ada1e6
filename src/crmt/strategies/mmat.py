"""MMAT: multi-modal adversarial training, JT on joint l2-PGD examples (baselines.md §6)."""

from __future__ import annotations


from crmt.strategies.adversarial import adversarial_batch, check_adversary_settings
from crmt.strategies.base import Batch
from crmt.strategies.jt import JointTraining


class MultiModalAdversarialTraining(JointTraining):
    """Minimise CE(h(x_adv), y), x_adv the multi-modal l2-PGD example of each training batch.

    Args (besides :class:`MultiModalModule`'s):
        at_eps: joint l2 budget of the training attack (0.1 in the CRMT code's generator).
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

    def training_step(self, batch: Batch, batch_idx: int):
        hp = self.hparams
        return super().training_step(
            adversarial_batch(self, batch, hp.at_eps, hp.at_steps, hp.at_step_fraction, hp.at_random_start), batch_idx
        )
