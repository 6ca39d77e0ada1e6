"""One LightningModule per training strategy, all built on :class:`MultiModalModule`."""

from crmt.strategies.base import MultiModalModule
from crmt.strategies.crmt import CRMTJointTraining
from crmt.strategies.crmt_at import CRMTAdversarialTraining
from crmt.strategies.crmt_mix import CRMTMixup
from crmt.strategies.gb import GradientBlending
from crmt.strategies.jt import JointTraining
from crmt.strategies.mixup import MixupTraining
from crmt.strategies.mmat import MultiModalAdversarialTraining
from crmt.strategies.mmt import CRMTMultiModalTransformer, MultiModalTransformer
from crmt.strategies.msefm import MinSimExFMem
from crmt.strategies.ogm import OGMGE
from crmt.strategies.pmr import PrototypicalModalRebalance

__all__ = [
    "MultiModalModule",
    "JointTraining",
    "CRMTJointTraining",
    "CRMTAdversarialTraining",
    "MultiModalAdversarialTraining",
    "CRMTMixup",
    "CRMTMultiModalTransformer",
    "GradientBlending",
    "MinSimExFMem",
    "MixupTraining",
    "MultiModalTransformer",
    "OGMGE",
    "PrototypicalModalRebalance",
]
