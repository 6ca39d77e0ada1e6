"""``python -m crmt.compare [EXPERIMENT ...]`` (``make compare``): train several strategies on the same
data with the same seed, then put their robustness reports side by side.

Each experiment runs as its own ``python -m crmt fit --config experiments/<name>.yaml`` process
(so W&B runs and global state never mix) with its report written to ``<out>/<name>/``; an
experiment whose ``metrics.json`` already exists is reused unless ``--force``. The result,
``<out>/compare.md``, holds the accuracy table in the layout of the paper's Tables 1 and 2, the
certified radii, the wall time of each run, which of the paper's orderings hold, and the
ablation figure (the paper's Figure 5) ``<out>/ablation.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from crmt.robustness.figures import plot_accuracy_vs_radius
from crmt.robustness.report import accuracy_table, certificate_table

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
ALL_EXPERIMENTS = (
    "jt", "ojt", "gb", "ogm", "pmr", "msefm", "mmat", "mixup",
    "crmt_jt", "crmt_at", "crmt_mix", "crmt_step1", "crmt_step2", "mmt", "crmt_mmt",
)
"""Every strategy of the paper on the embedded dataset, the default of ``make compare``."""
ABLATION = ("jt", "ojt", "crmt_step1", "crmt_step2", "crmt_jt")
"""The models of the paper's ablation figure (Figure 5)."""


def run_experiment(name: str, out: Path, extra_args: Sequence[str], force: bool) -> dict:
    """Train and test ``experiments/<name>.yaml`` (unless already done) and return its metrics."""
    config = EXPERIMENTS_DIR / f"{name}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"experiment {name!r}: {config} does not exist")
    folder = out / name
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file() and not force:
        print(f"[compare] {name}: reusing {metrics_path}", flush=True)
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "crmt", "fit", "--config", str(config), "--report_dir", str(folder), *extra_args]
    print(f"[compare] {name}: {shlex.join(command)} (log: {folder / 'train.log'})", flush=True)
    start = time.perf_counter()
    with (folder / "train.log").open("w", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or not metrics_path.is_file():
        raise RuntimeError(f"experiment {name!r} failed (exit code {result.returncode}); see {folder / 'train.log'}")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics["wall_seconds"] = seconds
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"[compare] {name}: done in {seconds:.0f} s", flush=True)
    return metrics


def paper_orderings(metrics: Mapping[str, Mapping], modalities: Sequence[str]) -> list[str]:
    """Whether the paper's headline orderings hold among the compared models, one line each."""
    lines = []

    def accuracy(name: str, key: str) -> float:
        return metrics[name]["accuracy"][key]

    if {"jt", "crmt_jt"} <= metrics.keys():
        for key, title in (("clean", "clean"), ("fgm", "FGM"), ("pgd", "PGD-l2")):
            holds = accuracy("crmt_jt", key) > accuracy("jt", key)
            lines.append(f"CRMT-JT above JT, {title}: {'holds' if holds else 'does not hold'} "
                         f"({accuracy('crmt_jt', key):.3f} vs {accuracy('jt', key):.3f})")
    if "crmt_at" in metrics and len(metrics) > 1:
        for key, title in (("fgm", "FGM"), ("pgd", "PGD-l2")):
            best = max(metrics, key=lambda name: accuracy(name, key))
            holds = accuracy("crmt_at", key) >= accuracy(best, key)
            lines.append(f"CRMT-AT best under {title}: {'holds' if holds else f'does not hold (best: {best})'} "
                         f"({accuracy('crmt_at', key):.3f} vs {accuracy(best, key):.3f})")
    if {"jt", "crmt_jt"} <= metrics.keys() and len(modalities) == 2:
        first, second = (f"pgd_{name}" for name in modalities)
        gaps = {name: abs(accuracy(name, first) - accuracy(name, second)) for name in ("jt", "crmt_jt")}
        holds = gaps["crmt_jt"] < gaps["jt"]
        lines.append(f"gap between uni-modal PGD on {modalities[0]} and on {modalities[1]} smaller for CRMT-JT than JT: "
                     f"{'holds' if holds else 'does not hold'} ({gaps['crmt_jt']:.3f} vs {gaps['jt']:.3f})")
    return lines


def write_comparison(metrics: Mapping[str, Mapping], out: Path) -> Path:
    """``compare.md`` and ``ablation.png`` from the metrics of each experiment."""
    modalities = next(iter(metrics.values()))["modalities"]
    parts = [
        "# Comparison of training strategies",
        "",
        "Same data and seed for every model; attacks as in the paper's protocol (see each `<name>/report.md`).",
        "",
        "## Accuracy (Tables 1 and 2 layout)",
        "",
        accuracy_table(metrics, modalities),
        "",
        "## Certified radii",
        "",
        certificate_table(metrics, modalities),
        "",
        "## Paper orderings",
        "",
        *[f"- {line}" for line in paper_orderings(metrics, modalities)],
        "",
        "## Wall time (train + test + report)",
        "",
        *[f"- {name}: {m['wall_seconds']:.0f} s" for name, m in metrics.items() if "wall_seconds" in m],
    ]
    ablation = {name: metrics[name]["curves"] for name in ABLATION if name in metrics}
    if ablation:
        radii = next(iter(ablation.values()))["radii"]
        path = plot_accuracy_vs_radius(
            radii, {name: curves["multimodal"] for name, curves in ablation.items()}, out / "ablation.png",
            "ablation: accuracy under multi-modal l2-PGD",
        )
        parts += ["", f"Ablation figure (the paper's Figure 5): `{path}`"]
    path = out / "compare.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=list(ALL_EXPERIMENTS), help="experiment names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    parser.add_argument("--args", default="", help="LightningCLI overrides passed to every run, e.g. '--trainer.max_epochs 2'")
    parser.add_argument("--force", action="store_true", help="retrain experiments whose metrics.json exists")
    options = parser.parse_args(argv)
    start = time.perf_counter()
    metrics = {
        name: run_experiment(name, options.out, shlex.split(options.args), options.force) for name in options.experiments
    }
    path = write_comparison(metrics, options.out)
    print(path.read_text(encoding="utf-8"))
    print(f"[compare] {len(metrics)} experiments in {time.perf_counter() - start:.0f} s; written {path}")
    return path


if __name__ == "__main__":
    main()
