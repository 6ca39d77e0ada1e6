"""Cost of the full robustness report against one l2-PGD pass over the embedded test split.

Both passes read the test split through the data module's loader (decoding included), on the
same model, in the same process, interleaved over ``--repeats`` rounds (median reported):

- reference: multi-modal l2-PGD (the paper's 4 steps of eps/3, at the report's multi-modal
  budget) on every batch, then the predictions on the adversarial inputs;
- report: everything the ``RobustnessReport`` callback does (clean, multi-modal FGM/PGD,
  uni-modal FGM/PGD per modality, missing modality, accuracy-vs-radius curves, Lipschitz
  estimates, certified radii, the radius audit, randomized smoothing with the settings of
  ``experiments/defaults.yaml``; the layer-product sound bound only where those settings turn it on)
  and writing the files.

Two models, trained first with the shipped experiments ``jt`` and ``crmt_jt`` (about 1 min):
JT (its Lipschitz table is estimated over the evaluated samples: the expensive path) and
CRMT-JT after its phase switch (tau~ known from the training set).
Prints a table and writes ``runs/bench/report.json``: ``python -m benchmarks.report``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import yaml

from benchmarks.progress import Rounds, note
from crmt.cli import DEFAULTS_FILE as DEFAULTS
from crmt.cli import main as crmt_main
from crmt.models.protocol import Batch, MultiModalModel
from crmt.robustness.attack import predict
from crmt.robustness.ball import Ball, PixelRanges, pixel_ranges_for
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.pgd import L2PGD
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.report import write_report
from data_modules import EmbeddedAVDataModule


def report_settings(config: Path) -> RobustnessSettings:
    """The settings of the ``RobustnessReport`` callback in ``config`` (those of every embedded experiment)."""
    settings = yaml.safe_load(config.read_text())["report"].get("settings", {})
    return RobustnessSettings.from_json(settings)


def train(experiment: str, root: str) -> MultiModalModel:
    """The model of ``experiments/<experiment>.yaml`` after its default training (no logger, no test)."""
    with tempfile.TemporaryDirectory() as folder:
        cli = crmt_main(
            ["fit", "--config", f"experiments/{experiment}.yaml", f"--data.init_args.root={root}",
             "--trainer.logger=false", f"--trainer.default_root_dir={folder}", "--test_after_fit=false"]
        )
    return cli.model.eval()


def pgd_pass(model: MultiModalModel, batches: Iterable[Batch], ranges: PixelRanges, eps: float) -> None:
    for batch in batches:
        inputs = model.inputs(batch)
        adversarial = L2PGD()(model, inputs, batch["label"], Ball.around(inputs, eps, pixel_ranges=ranges)).adversarial
        predict(model, adversarial)


def report_pass(
    model: MultiModalModel, batches: Iterable[Batch], ranges: PixelRanges, settings: RobustnessSettings
) -> None:
    evaluator = RobustnessEvaluator(model, settings, ranges)
    for batch in batches:
        evaluator.update(model.inputs(batch), batch["label"])
    with tempfile.TemporaryDirectory() as folder:
        write_report(evaluator.finalize(), Path(folder), "bench")


def interleaved_medians(candidates: dict[str, Callable[[], None]], repeats: int, what: str = "") -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` rounds after a warm-up; one line per round as it goes."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    rounds = Rounds("report", what, repeats + 1)
    for round_index in range(repeats + 1):
        rounds.start(round_index)
        for number, (name, run) in enumerate(candidates.items()):
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            rounds.done(name, seconds, number == len(candidates) - 1)
            if round_index:  # the first round warms up
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/embedded", help="embedded dataset folder (generated if missing)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/report.json"))
    options = parser.parse_args(argv)
    note("report", "training jt and crmt_jt on the embedded data (about 1 min)")
    models = {name: train(name, options.root) for name in ("jt", "crmt_jt")}
    data = EmbeddedAVDataModule(root=options.root)
    data.prepare_data()
    data.setup("test")
    loader = data.test_dataloader()
    settings = report_settings(DEFAULTS)
    adaptive = f"the {settings.adaptive.suite!r} adaptive suite" if settings.adaptive is not None else "no adaptive suite"
    smoothing = (f"smoothing of {settings.smoothing.samples or 'every'} clips" if settings.smoothing is not None
                 else "no smoothing")
    note("report", f"per model, 1 warm-up + {options.repeats} rounds of one l2-PGD pass and the full report "
                   f"(experiments/defaults.yaml's settings: {adaptive}, {smoothing}; minutes per report on 2 cores)")
    results = {"test_clips": len(loader.dataset), "threads": torch.get_num_threads(), "models": {}}
    print(f"report vs one l2-PGD pass: embedded test split ({len(loader.dataset)} clips), "
          f"{torch.get_num_threads()} threads, {options.repeats} rounds")
    for name, model in models.items():
        ranges = pixel_ranges_for(model.modalities, data.pixel_normalization)
        seconds = interleaved_medians(
            {
                "pgd_pass": lambda: pgd_pass(model, map(data.normalize, loader), ranges, settings.multimodal_eps),
                "report": lambda: report_pass(model, map(data.normalize, loader), ranges, settings),
            },
            options.repeats, name,
        )
        ratio = seconds["report"] / seconds["pgd_pass"]
        results["models"][name] = {**seconds, "ratio": ratio}
        print(f"  {name:8s} l2-PGD pass {seconds['pgd_pass']:6.2f} s   full report {seconds['report']:6.2f} s   "
              f"ratio {ratio:5.2f}x")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {options.out}")
    return results


if __name__ == "__main__":
    main()
