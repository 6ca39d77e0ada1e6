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


def attack_columns(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """(metrics key, column title) in the layout of the paper's Table 2."""
    columns = [("clean", "Clean"), ("fgm", "FGM"), ("pgd", "PGD-l2")]
    for name in modalities:
        columns += [(f"fgm_{name}", f"FGM {name}"), (f"pgd_{name}", f"PGD-l2 {name}")]
    columns += [(f"missing_{name}", f"missing {name}") for name in modalities]
    return columns


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_table(metrics_by_name: Mapping[str, Mapping], modalities: Sequence[str]) -> str:
    """Markdown table of accuracies, one row per model: clean, multi-modal FGM/PGD, uni-modal, missing."""
    columns = attack_columns(modalities)
    rows = [
        [name, *(_cell(metrics["accuracy"].get(key)) for key, _ in columns)] for name, metrics in metrics_by_name.items()
    ]
    return _markdown_table(["method", *(title for _, title in columns)], rows)


def certificate_table(metrics_by_name: Mapping[str, Mapping], modalities: Sequence[str]) -> str:
    """Markdown table of mean certified radii (estimated and sound), the audit and the eta log-ratio."""
    header = ["method", "mean radius", *(f"mean radius {m}" for m in modalities), "audit violations",
              "mean radius, model's own tau~", "mean sound radius", "mean log eta ratio"]
    rows = []
    for name, metrics in metrics_by_name.items():
        certified = metrics.get("certified")
        if certified is None:
            rows.append([name, *["-"] * (len(header) - 1)])
            continue
        audit = metrics.get("audit", {})
        own = metrics.get("certified_model", {}).get("multimodal", {})
        sound = metrics.get("certified_sound", {}).get("multimodal", {})
        rows.append([
            name,
            _cell(certified["multimodal"]["mean"]),
            *(_cell(certified[m]["mean"]) for m in modalities),
            f"{audit.get('violations', 0)}/{audit.get('eligible', 0)}" if audit else "-",
            _cell(own.get("mean")),
            f"{sound['mean']:.2e}" if sound else "-",
            _cell(metrics.get("eta_ratio", {}).get("mean_log_ratio")),
        ])
    return _markdown_table(header, rows)


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


def render_markdown(name: str, metrics: Mapping) -> str:
    """The Markdown report of one model."""
    modalities = metrics["modalities"]
    settings = metrics["settings"]
    parts = [
        f"# Robustness report: {name}",
        "",
        f"{metrics['samples']} samples. Multi-modal attacks: joint l2 budget {settings['multimodal_eps']}; "
        f"uni-modal attacks: l2 budget {settings['unimodal_eps']} on one modality; PGD: {settings['steps']} steps "
        f"of {settings['step_fraction']:.3g} x budget; missing modality: input set to {settings['missing_fill']}.",
        "",
        "## Accuracy (the layout of the paper's Table 2)",
        "",
        accuracy_table({name: metrics}, modalities),
    ]
    if "certified" in metrics:
        audit = metrics["audit"]
        parts += [
            "",
            "## Certified radii",
            "",
            f"Lipschitz constants: {metrics['certified']['lipschitz']}, the same protocol for every strategy"
            + (f"; the model's own radius: {metrics['certified_model']['lipschitz']}" if "certified_model" in metrics else "")
            + f". Audit: l2-PGD with "
            f"{settings['audit_steps']} steps inside {settings['audit_fraction']} x each estimated radius, from the "
            f"multi-modal PGD's example rescaled into it, beat "
            f"{audit['violations']} of {audit['eligible']} certified samples (violation rate "
            f"{audit['violation_rate']:.3f}).",
            "",
            certificate_table({name: metrics}, modalities),
        ]
    elif "certified_sound" in metrics:
        parts += ["", f"Certified radii: {metrics['certified_sound'].get('note', 'not computed')}."]
    return "\n".join(parts) + "\n"


def write_report(
    results: RobustnessResults, folder: Path, name: str, context: dict[str, object] | None = None
) -> ReportFiles:
    """Write ``report.md``, ``metrics.json`` and the PNG figures of ``results`` into ``folder``;
    ``context`` (what the numbers depend on: seed, threads, device, versions, skipped clips) goes
    into ``metrics.json`` under ``run``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"name": name, **results.metrics(), **({"run": context} if context is not None else {})}
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (folder / "per_sample.json").write_text(json.dumps(results.per_sample()) + "\n", encoding="utf-8")
    markdown_path = folder / "report.md"
    markdown_path.write_text(render_markdown(name, metrics), encoding="utf-8")
    curves = metrics["curves"]
    accuracy_path = plot_accuracy_vs_radius(
        curves["radii"],
        {("multi-modal" if key == "multimodal" else f"{key} only"): curves[key] for key in ("multimodal", *results.modalities)},
        folder / "accuracy_vs_radius.png",
        f"{name}: accuracy under l2-PGD",
    )
    heatmap_path = certified_path = None
    ratio = results.eta_ratio()
    if ratio is not None:
        heatmap_path = plot_eta_ratio_heatmap(ratio.cpu().numpy(), metrics["eta_ratio"]["pair"], folder / "eta_ratio_heatmap.png")
        certified = {
            ("multi-modal" if key == "multimodal" else f"{key} only"): metrics["certified"][key]["certified_accuracy"]
            for key in ("multimodal", *results.modalities)
        }
        if "certified_sound" in metrics and "multimodal" in metrics["certified_sound"]:
            certified["multi-modal, sound"] = metrics["certified_sound"]["multimodal"]["certified_accuracy"]
        certified_path = plot_certified_accuracy(
            metrics["certified"]["radius_grid"], certified, folder / "certified_accuracy.png", f"{name}: certified accuracy"
        )
    return ReportFiles(markdown_path, metrics_path, accuracy_path, heatmap_path, certified_path)
