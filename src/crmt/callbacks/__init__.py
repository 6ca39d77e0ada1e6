"""Lightning callbacks: resume points, robustness monitoring during validation, the robustness report after test,
predictions, and the channels_last layout."""

from crmt.callbacks.checkpoints import RunCheckpoints
from crmt.callbacks.layout import ChannelsLast
from crmt.callbacks.predictions import PredictionWriter
from crmt.callbacks.robustness import RobustnessMonitor, RobustnessReport
from crmt.robustness.settings import RobustnessSettings
from crmt.runs import run_folder

__all__ = [
    "ChannelsLast", "PredictionWriter", "RobustnessMonitor", "RobustnessReport", "RobustnessSettings", "RunCheckpoints",
    "run_folder",
]
