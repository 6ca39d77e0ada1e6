"""Cost of the adaptive evaluation against one paper-protocol l2-PGD pass, on the same model and clips.

Two models, trained first with the shipped experiments ``jt`` and ``crmt_jt`` (about 1 min; see
:mod:`benchmarks.report`), evaluated on ``--clips`` test clips of the embedded data spread evenly over
the split, at the embedded budgets (``experiments/defaults.yaml``), in the same process:

- reference: one multi-modal l2-PGD pass of the paper's protocol (4 steps of eps / 3) and its predictions;
- suite: the adaptive suite (``--suite``) on every correctly classified clip in every scope (multi-modal
  and each modality), as the report runs it (:class:`~crmt.robustness.adaptive.AdaptiveEvaluator`), the
  sanity checks excluded;
- checks: the sanity checks that attack (large budget, convergence at twice the suite's size), on the
  report's ``sanity_samples`` clips.

Each is timed once per round over ``--repeats`` rounds (median). Prints a table (with the suite's
per-attack counts) and writes ``runs/bench/adaptive.json``: ``python -m benchmarks.adaptive``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.progress import note
from benchmarks.report import report_settings, train
from benchmarks.scale import clock, device_info, emit, pick_device
from crmt.cli import DEFAULTS_FILE as DEFAULTS
from crmt.models.protocol import MultiModalModel
from crmt.robustness.adaptive import NOT_ATTACKED, STANDING, AdaptiveEvaluator
from crmt.robustness.attack import predict
from crmt.robustness.ball import Ball, PixelRanges, pixel_ranges_for
from crmt.robustness.evaluation import evaluate_batch
from crmt.robustness.pgd import L2PGD
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import evenly_spaced
from crmt.robustness.suite import SUITES, AdaptiveSettings
from crmt.robustness.threats import Scope, Threat
from data_modules import EmbeddedAVDataModule

Clips = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]
"""Inputs (one tensor per modality), labels and dataset indices of the benchmarked clips."""


def spread_clips(data: EmbeddedAVDataModule, model: MultiModalModel, count: int, device: torch.device) -> Clips:
    """``count`` test clips at the dataset indices spread evenly over the split, normalised, on ``device``."""
    chosen = sorted(evenly_spaced(len(data.test_dataloader().dataset), count))
    batches = [data.normalize(batch) for batch in data.test_dataloader()]
    index = torch.cat([batch["index"] for batch in batches])
    rows = torch.tensor([int((index == i).nonzero()) for i in chosen])
    inputs = [torch.cat([x[m] for x in (model.inputs(b) for b in batches)])[rows].to(device) for m in range(len(model.modalities))]
    labels = torch.cat([batch["label"] for batch in batches])[rows].to(device)
    return inputs, labels, index[rows].to(device)


def paper_pgd(model: MultiModalModel, clips: Clips, ranges: PixelRanges, eps: float, batch: int) -> None:
    inputs, labels, _ = clips
    for start in range(0, labels.shape[0], batch):
        part = [x[start:start + batch] for x in inputs]
        adversarial = L2PGD()(model, part, labels[start:start + batch], Ball.around(part, eps, pixel_ranges=ranges)).adversarial
        predict(model, adversarial)


def adaptive_evaluator(model: MultiModalModel, clips: Clips, ranges: PixelRanges, settings: RobustnessSettings,
                       batch: int, dataset_size: int) -> AdaptiveEvaluator:
    """The evaluator fed every batch of ``clips`` (the paper's protocol run first, untimed, for its outcomes);
    its chunk holds every clip, so the suite runs when :meth:`~AdaptiveEvaluator.attack_waiting` is called."""
    inputs, labels, index = clips
    evaluator = AdaptiveEvaluator(model, settings, ranges, dataset_size)
    scopes = Scope.every(list(model.modalities))
    for start in range(0, labels.shape[0], batch):
        rows = slice(start, start + batch)
        part = [x[rows] for x in inputs]
        records, _, clean = evaluate_batch(model, part, labels[rows], settings, ranges)
        correct = records.correct[Threat("clean")]
        broken = {}
        for scope in scopes:
            budget = settings.budget(scope)
            paper = [records.correct[Threat(kind, scope.modalities, budget)] for kind in ("fgm", "pgd")]
            broken[scope] = correct & ~(paper[0] & paper[1])
        evaluator.add(part, labels[rows], index[rows], clean, broken)
    return evaluator


def run_model(model: MultiModalModel, clips: Clips, ranges: PixelRanges, settings: RobustnessSettings, repeats: int,
              batch: int, dataset_size: int) -> dict:
    """Median seconds of the reference, the suite and the checks, and per scope the clips first broken by each
    attack of the suite, left standing by it, and not attacked (misclassified, or broken by the paper's attacks)."""
    times: dict[str, list[float]] = {"pgd_pass": [], "suite": [], "checks": []}
    device = clips[1].device
    evaluator = None
    for _ in range(repeats):
        start = clock(device)
        paper_pgd(model, clips, ranges, settings.multimodal_eps, batch)
        times["pgd_pass"].append(clock(device) - start)
        evaluator = adaptive_evaluator(model, clips, ranges, settings, batch, dataset_size)
        start = clock(device)
        evaluator.attack_waiting()
        times["suite"].append(clock(device) - start)
        start = clock(device)
        checks = evaluator.finish()
        times["checks"].append(clock(device) - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    labels = {**dict(enumerate(evaluator.names)), STANDING: "standing", NOT_ATTACKED: "not attacked"}
    counts = {scope.key: {name: int((codes == code).sum()) for code, name in labels.items()}
              for scope, codes in ((s, torch.cat([b[s] for b in evaluator.broken_by])) for s in evaluator.scopes)}
    return {**seconds, "suite_ratio": seconds["suite"] / seconds["pgd_pass"],
            "checks_ratio": seconds["checks"] / seconds["pgd_pass"], "broken_by": counts,
            "sanity_checks": [check.to_json() for check in checks]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaptive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/embedded", help="embedded dataset folder (generated if missing)")
    parser.add_argument("--suite", default="quick", choices=sorted(SUITES))
    parser.add_argument("--clips", type=int, default=64, help="test clips, spread evenly over the split")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/adaptive.json"))
    options = parser.parse_args(argv)
    device = pick_device(options.device)
    print(f"[bench adaptive] training jt and crmt_jt on the embedded data (about 1 min), then the suite "
          f"{options.suite!r} on {options.clips} clips, {options.repeats} round(s)", flush=True)
    models = {name: train(name, options.root).to(device) for name in ("jt", "crmt_jt")}
    data = EmbeddedAVDataModule(root=options.root)
    data.prepare_data()
    data.setup("test")
    dataset_size = len(data.test_dataloader().dataset)
    base = report_settings(DEFAULTS)
    settings = RobustnessSettings(
        multimodal_eps=base.multimodal_eps, unimodal_eps=base.unimodal_eps, curve_radii=(), certify=False,
        adaptive=replace(base.adaptive or AdaptiveSettings(), suite=options.suite, chunk=options.clips),
    )
    results = {"suite": options.suite, "size": vars(SUITES[options.suite]), "clips": options.clips,
               "device": device_info(device), "models": {}}
    lines = [f"adaptive suite {options.suite!r} ({SUITES[options.suite].describe()}) vs one multi-modal l2-PGD pass "
             f"(the paper's protocol), {options.clips} embedded test clips, {device.type}, "
             f"{torch.get_num_threads()} threads"]
    for name, model in models.items():
        ranges = pixel_ranges_for(model.modalities, data.pixel_normalization)
        clips = spread_clips(data, model, options.clips, device)
        note("adaptive", f"{name}: the PGD pass, the suite and its sanity checks, {options.repeats} round(s)")
        started = time.perf_counter()
        result = run_model(model, clips, ranges, settings, options.repeats, 16, dataset_size)
        results["models"][name] = result
        lines.append(f"  {name:8s} PGD pass {result['pgd_pass']:7.2f} s   suite {result['suite']:8.2f} s "
                     f"({result['suite_ratio']:6.1f}x)   checks {result['checks']:7.2f} s ({result['checks_ratio']:6.1f}x)   "
                     f"broken first by {result['broken_by']}   [{time.perf_counter() - started:.0f} s]")
        print(lines[-1], flush=True)
    emit(results, "\n".join(lines), options.out)
    return results


if __name__ == "__main__":
    main()
