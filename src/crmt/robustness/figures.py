"""PNG figures of the paper: accuracy vs attack radius (Figures 1, 4, 5), the eta ratio heatmap
(Figure 3) and certified accuracy vs radius. Rendered off-screen with matplotlib's Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from crmt.robustness.results import EtaRatio, SurvivalCurve  # noqa: E402

FAMILY_STYLES: tuple[str, ...] = ("-", "--", ":", "-.")
"""Line styles of the certified-accuracy figure's families, in order."""


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _accuracy_axes(x_label: str, y_label: str, title: str, size: tuple[float, float]):
    """A figure and its axes, accuracy in [0, 1] on the y axis."""
    figure, axis = plt.subplots(figsize=size)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.set_ylim(0.0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return figure, axis


def plot_accuracy_vs_radius(
    radii: Sequence[float], curves: Mapping[str, Sequence[float]], path: Path, title: str,
    points: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """One line per curve: accuracy (y) at each l2 attack radius (x; 0 is the clean accuracy). ``points``:
    per curve label, one (radius, accuracy) drawn as a star in the curve's colour (the adaptive
    evaluation's worst case at the table's budget)."""
    figure, axis = _accuracy_axes("l2 attack radius", "accuracy", title, (5.4, 3.8))
    for number, (label, accuracy) in enumerate(curves.items()):
        axis.plot(radii, accuracy, marker="o", color=f"C{number}", label=label)
        if points and label in points:
            radius, value = points[label]
            axis.plot([radius], [value], marker="*", markersize=12, linestyle="none", color=f"C{number}",
                      label=f"{label}: adaptive")
    axis.legend(fontsize="small")
    return _save(figure, path)


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
    families: Mapping[str, Mapping[str, SurvivalCurve]], path: Path, title: str, reach: float | None = None
) -> Path:
    """Certified accuracy against the l2 radius r, every curve on the same axes as the exact
    left-continuous step function of its per-sample radii (``step(where="pre")``, dropping to 0 after
    its last radius). ``families``: curves by family (e.g. "estimated", "smoothed, sound") and scope
    label; one colour per scope label, one line style per family, legend "<family> (<scope>)".
    ``reach``: smoothing's R_max, drawn as a grey vertical line (no smoothed curve goes beyond it)."""
    figure, axis = _accuracy_axes("l2 radius r", "certified accuracy", title, (6.0, 4.0))
    labels = list(dict.fromkeys(label for curves in families.values() for label in curves))
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    end = 1.05 * max(curve.radii[-1] for curves in families.values() for curve in curves.values()) or 1.0
    for style, (family, curves) in zip(FAMILY_STYLES, families.items(), strict=False):
        for label, curve in curves.items():
            axis.step([*curve.radii, end], [*curve.accuracy, 0.0], where="pre", linestyle=style,
                      color=colours[label], label=f"{family} ({label})")
    if reach is not None:
        axis.axvline(reach, color="grey", linestyle=":", label=f"smoothing's reach R_max = {reach:.2f}")
    axis.set_xlim(0.0, end)
    axis.legend(fontsize="small")
    return _save(figure, path)
