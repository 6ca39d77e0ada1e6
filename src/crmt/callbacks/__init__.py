"""Lightning callbacks: resume points, robustness monitoring during validation and the robustness report after test."""

from crmt.callbacks.checkpoints import RunCheckpoints
from crmt.callbacks.robustness import RobustnessMonitor, RobustnessReport, run_folder
from crmt.robustness.evaluation import RobustnessSettings

__all__ = ["RobustnessMonitor", "RobustnessReport", "RobustnessSettings", "RunCheckpoints", "run_folder"]
