"""One LightningModule per training strategy, all built on :class:`MultiModalModule`."""

from crmt.strategies.base import MultiModalModule
from crmt.strategies.crmt import CRMTJointTraining
from crmt.strategies.jt import JointTraining

__all__ = ["MultiModalModule", "JointTraining", "CRMTJointTraining"]
