"""Lightning callbacks: resume points, robustness monitoring during validation, the robustness report after test,
and the channels_last layout."""

from crmt.callbacks.checkpoints import RunCheckpoints
from crmt.callbacks.layout import ChannelsLast
from crmt.callbacks.robustness import RobustnessMonitor, RobustnessReport, run_folder
from crmt.robustness.settings import RobustnessSettings

__all__ = ["ChannelsLast", "RobustnessMonitor", "RobustnessReport", "RobustnessSettings", "RunCheckpoints", "run_folder"]
