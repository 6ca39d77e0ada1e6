"""The robustness report: the paper's Table 2 layout in Markdown, ``metrics.json`` and the figures."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crmt.robustness.evaluation import RobustnessResults
from crmt.robustness.figures import (
    plot_accuracy_vs_radius,
    plot_certified_accuracy,
    plot_eta_ratio_heatmap,
)
from crmt.robustness.results import RobustnessMetrics
from crmt.robustness.threats import Scope


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_table(metrics_by_name: Mapping[str, RobustnessMetrics]) -> str:
    """Markdown table of accuracies, one row per model, the columns of the paper's Table 2 (the
    first model's threats): clean, multi-modal FGM/PGD, uni-modal FGM/PGD, missing."""
    threats = next(iter(metrics_by_name.values())).threats
    rows = [
        [name, *(_cell(metrics.accuracy.get(threat)) for threat in threats)] for name, metrics in metrics_by_name.items()
    ]
    return markdown_table(["method", *(threat.title for threat in threats)], rows)


def certificate_table(metrics_by_name: Mapping[str, RobustnessMetrics]) -> str:
    """Markdown table of mean certified radii (estimated and sound), the audit and the eta log-ratio."""
    modalities = next(iter(metrics_by_name.values())).modalities
    header = ["method", "mean radius", *(f"mean radius {m}" for m in modalities), "audit violations",
              "mean radius, model's own tau~", "mean sound radius", "mean log eta ratio"]
    rows = []
    for name, metrics in metrics_by_name.items():
        certified = metrics.certified
        if certified is None:
            rows.append([name, *["-"] * (len(header) - 1)])
            continue
        audit, own, sound, ratio = metrics.audit, metrics.certified_model, metrics.certified_sound, metrics.eta_ratio
        rows.append([
            name,
            _cell(certified.multimodal.mean),
            *(_cell(certified.radii[Scope((m,))].mean) for m in modalities),
            f"{audit.violations}/{audit.eligible}" if audit is not None else "-",
            _cell(own.multimodal.mean if own is not None else None),
            f"{sound.multimodal.mean:.2e}" if sound is not None else "-",
            _cell(ratio.mean_log_ratio if ratio is not None else None),
        ])
    return markdown_table(header, rows)


@dataclass
class ReportFiles:
    """Paths of one report's files (figures that do not apply are ``None``)."""

    markdown: Path
    metrics: Path
    accuracy_vs_radius: Path
    eta_ratio_heatmap: Path | None
    certified_accuracy: Path | None

    def images(self) -> dict[str, Path]:
        names = ("accuracy_vs_radius", "eta_ratio_heatmap", "certified_accuracy")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def render_markdown(name: str, metrics: RobustnessMetrics) -> str:
    """The Markdown report of one model."""
    settings = metrics.settings
    parts = [
        f"# Robustness report: {name}",
        "",
        f"{metrics.samples} samples. Multi-modal attacks: joint l2 budget {settings.multimodal_eps}; "
        f"uni-modal attacks: l2 budget {settings.unimodal_eps} on one modality; PGD: {settings.steps} steps "
        f"of {settings.step_fraction:.3g} x budget; missing modality: input set to {settings.missing_fill}.",
        "",
        "## Accuracy (the layout of the paper's Table 2)",
        "",
        accuracy_table({name: metrics}),
    ]
    if metrics.certified is not None:
        audit = metrics.audit
        own = metrics.certified_model
        parts += [
            "",
            "## Certified radii",
            "",
            f"Lipschitz constants: {metrics.certified.lipschitz}, the same protocol for every strategy"
            + (f"; the model's own radius: {own.lipschitz}" if own is not None else "")
            + f". Audit: l2-PGD with "
            f"{settings.audit_steps} steps inside {settings.audit_fraction} x each estimated radius, from the "
            f"multi-modal PGD's example rescaled into it, beat "
            f"{audit.violations} of {audit.eligible} certified samples (violation rate "
            f"{audit.violation_rate:.3f}).",
            "",
            certificate_table({name: metrics}),
        ]
    elif metrics.sound_note:
        parts += ["", f"Certified radii: {metrics.sound_note}."]
    return "\n".join(parts) + "\n"


def write_report(
    results: RobustnessResults, folder: Path, name: str, context: dict[str, object] | None = None
) -> ReportFiles:
    """Write ``report.md``, ``metrics.json`` and the PNG figures of ``results`` into ``folder``;
    ``context`` (what the numbers depend on: seed, threads, device, versions, skipped clips) goes
    into ``metrics.json`` under ``run``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = results.metrics()
    document = {"name": name, **metrics.to_json(), **({"run": context} if context is not None else {})}
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (folder / "per_sample.json").write_text(json.dumps(results.per_sample()) + "\n", encoding="utf-8")
    markdown_path = folder / "report.md"
    markdown_path.write_text(render_markdown(name, metrics), encoding="utf-8")
    accuracy_path = plot_accuracy_vs_radius(
        metrics.curves.radii,
        {scope.label: values for scope, values in metrics.curves.accuracy.items()},
        folder / "accuracy_vs_radius.png",
        f"{name}: accuracy under l2-PGD",
    )
    heatmap_path = certified_path = None
    if metrics.eta_ratio is not None:
        heatmap_path = plot_eta_ratio_heatmap(metrics.eta_ratio, folder / "eta_ratio_heatmap.png")
    if metrics.certified is not None:
        certified = {scope.label: summary.certified_accuracy for scope, summary in metrics.certified.radii.items()}
        if metrics.certified_sound is not None:
            certified["multi-modal, sound"] = metrics.certified_sound.multimodal.certified_accuracy
        certified_path = plot_certified_accuracy(
            metrics.certified.radius_grid, certified, folder / "certified_accuracy.png", f"{name}: certified accuracy"
        )
    return ReportFiles(markdown_path, metrics_path, accuracy_path, heatmap_path, certified_path)
