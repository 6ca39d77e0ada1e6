"""PNG figures of the paper: accuracy vs attack radius (Figures 1, 4, 5), the eta ratio heatmap
(Figure 3) and certified accuracy vs radius. Rendered off-screen with matplotlib's Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from crmt.robustness.results import EtaRatio  # noqa: E402


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _line_plot(
    radii: Sequence[float], curves: Mapping[str, Sequence[float]], path: Path, title: str, x_label: str, y_label: str, step: bool
) -> Path:
    """One line (or step line) per curve over the radii, accuracy in [0, 1] on the y axis."""
    figure, axis = plt.subplots(figsize=(5.0, 3.6))
    for label, accuracy in curves.items():
        if step:
            axis.step(radii, accuracy, where="post", label=label)
        else:
            axis.plot(radii, accuracy, marker="o", label=label)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.set_ylim(0.0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def plot_accuracy_vs_radius(
    radii: Sequence[float], curves: Mapping[str, Sequence[float]], path: Path, title: str
) -> Path:
    """One line per curve: accuracy (y) at each l2 attack radius (x; 0 is the clean accuracy)."""
    return _line_plot(radii, curves, path, title, "l2 attack radius", "accuracy", step=False)


def plot_eta_ratio_heatmap(ratio: EtaRatio, path: Path) -> Path:
    """K x K heatmap of log2(eta^(numerator) / eta^(denominator)) per class pair (y row, j column);
    the diagonal is blank.

    Positive (red) cells: the numerator's modality is the more vulnerable one for that pair.
    """
    values = ratio.array()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log2(np.clip(values, 1e-12, None))
    finite = log_ratio[np.isfinite(log_ratio)]
    limit = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-3)
    size = max(3.6, min(10.0, 0.25 * values.shape[0] + 2.5))
    figure, axis = plt.subplots(figsize=(size + 0.8, size))
    image = axis.imshow(log_ratio, cmap="coolwarm", vmin=-limit, vmax=limit)
    figure.colorbar(image, ax=axis, label=f"log2 eta ratio {ratio.pair}")
    ticks = np.arange(0, values.shape[0], max(1, values.shape[0] // 16))
    axis.set_xticks(ticks)
    axis.set_yticks(ticks)
    axis.set_xlabel("class j")
    axis.set_ylabel("label y")
    axis.set_title(f"vulnerability ratio eta {ratio.pair}")
    return _save(figure, path)


def plot_certified_accuracy(
    radii: Sequence[float], curves: Mapping[str, Sequence[float]], path: Path, title: str
) -> Path:
    """Certified accuracy (fraction correct with radius >= r) against r, one step line per certificate."""
    return _line_plot(radii, curves, path, title, "l2 radius r", "certified accuracy", step=True)
