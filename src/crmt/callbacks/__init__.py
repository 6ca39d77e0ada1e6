"""Lightning callbacks: robustness monitoring during validation and the robustness report after test."""

from crmt.callbacks.robustness import RobustnessMonitor, RobustnessReport, run_folder
from crmt.robustness.evaluation import RobustnessSettings

__all__ = ["RobustnessMonitor", "RobustnessReport", "RobustnessSettings", "run_folder"]
