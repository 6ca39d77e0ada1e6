"""``python -m benchmarks.smoothing``: what randomized-smoothing certification costs per test clip,
against one l2-PGD pass, at tiny CPU sizes (default), the embedded data's (``--sizes embedded``) or
the paper's (``--sizes paper``), on CPU or one GPU.

The model is CRMT-JT at :mod:`benchmarks.scale`'s sizes with its initial weights, in evaluation mode
(the cost does not depend on the weights); inputs are random and resident on the device.

- ``certify_s``: CERTIFY (``--n0`` + ``--n`` draws, ``--draws-per-pass`` per forward) of one clip in
  every scope (joint, then each modality alone), as the report's ``SmoothingCertifier`` does,
  seconds per clip; noise drawn on the model's device. On CUDA also ``certify_host_noise_s``: the
  same with noise drawn on the host and copied (what the first version did).
- ``pgd_s``: the report's multi-modal l2-PGD (4 steps of eps/3) on a batch of clips, then the
  predictions on the adversarial inputs, seconds per clip (batch seconds / batch size).
- ``certify_over_pgd``: how many l2-PGD passes one clip's certification costs;
  ``certify_s_per_1000_draws``: the per-clip cost divided by (n0 + n) / 1000, to extrapolate to
  other n (the paper-scale report uses n0 = 100, n = 100000).

Medians over ``--clips`` clips (CERTIFY) and ``--repeats`` rounds (PGD), after one warm-up of each.
Prints one JSON line and a table; writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.progress import note
from benchmarks.scale import PAPER, TINY, build_model, clock, device_info, emit, pick_device, synthetic_batches
from crmt.robustness.attack import predict
from crmt.robustness.ball import Ball
from crmt.robustness.pgd import L2PGD
from crmt.robustness.smoothing import SmoothingSettings, certify, noise_generator
from crmt.strategies.crmt import CRMTJointTraining


EMBEDDED = replace(TINY, input_shapes={"visual": [3, 3, 48, 48], "audio": [1, 128, 100]}, batch=16)
"""The embedded data's inputs (data_modules.embedded.EMBEDDED_CLIP: 3 frames of 48 x 48, 128 x 100
fbank) and the experiments' model (K = 6, width 8), at the test loader's batch of 16."""


def certify_seconds(
    model: CRMTJointTraining, batch: dict[str, torch.Tensor], settings: SmoothingSettings, clips: int,
    noise_device: torch.device,
) -> float:
    """Median seconds of one clip's CERTIFY in every scope (joint, then each modality alone, as
    :class:`SmoothingCertifier` runs them), noise drawn on ``noise_device``, over ``clips`` clips
    after one warm-up clip."""
    inputs = model.inputs(batch)
    scopes = [list(range(len(inputs))), *([m] for m in range(len(inputs)))]
    times = []
    for i in range(clips + 1):
        sample = [x[i : i + 1] for x in inputs]
        start = clock(inputs[0].device)
        for number, noised in enumerate(scopes):
            certify(model, sample, noised, settings, noise_generator(settings.seed, i, number, noise_device))
        seconds = clock(inputs[0].device) - start
        note("smoothing", f"clip {i + 1}/{clips + 1}{' (warm-up)' if i == 0 else ''}, noise on the {noise_device.type}: "
                          f"{seconds:.2f} s")
        if i > 0:
            times.append(seconds)
    return statistics.median(times)


def pgd_seconds_per_clip(model: CRMTJointTraining, batch: dict[str, torch.Tensor], eps: float, repeats: int) -> float:
    """Median seconds per clip of one multi-modal l2-PGD pass and its predictions, after one warm-up."""
    inputs, labels = model.inputs(batch), batch["label"]
    attack, ball = L2PGD(), Ball.around(inputs, eps)
    times = []
    for round_index in range(repeats + 1):
        start = clock(labels.device)
        predict(model, attack(model, inputs, labels, ball).adversarial)
        if round_index > 0:
            times.append(clock(labels.device) - start)
    return statistics.median(times) / labels.shape[0]


def run_benchmark(args: argparse.Namespace) -> dict:
    """Every measurement of the module docstring, as a JSON-ready dict."""
    base = {"tiny": TINY, "embedded": EMBEDDED, "paper": PAPER}[args.sizes]
    sizes = replace(base, batches=1, batch=args.batch or base.batch)
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = build_model(sizes).to(device).eval()
    (batch,) = synthetic_batches(sizes, device)
    if args.clips >= sizes.batch:
        raise SystemExit(f"--clips must be below the batch size {sizes.batch} (one clip warms up)")
    settings = SmoothingSettings(sigma=args.sigma, n0=args.n0, n=args.n, batch=args.draws_per_pass)
    note("smoothing", f"CERTIFY of 1 warm-up + {args.clips} clips at {args.sizes} sizes on the {device.type} "
                      f"(n0 {args.n0} + n {args.n} draws, {len(sizes.input_shapes) + 1} scopes), then {args.repeats} "
                      "l2-PGD passes")
    certify_s = certify_seconds(model, batch, settings, args.clips, device)
    host_s = certify_seconds(model, batch, settings, args.clips, torch.device("cpu")) if device.type == "cuda" else None
    pgd_s = pgd_seconds_per_clip(model, batch, args.eps, args.repeats)
    return {
        "device": device_info(device),
        "sizes": {"num_classes": sizes.num_classes, "input_shapes": sizes.input_shapes, "pgd_batch": sizes.batch,
                  "encoder_width": sizes.encoder_width},
        "settings": {"sigma": args.sigma, "n0": args.n0, "n": args.n, "draws_per_pass": args.draws_per_pass,
                     "scopes": 1 + len(sizes.input_shapes), "clips": args.clips, "pgd_eps": args.eps},
        "certify_s": certify_s,
        "certify_host_noise_s": host_s,
        "pgd_s": pgd_s,
        "certify_over_pgd": certify_s / pgd_s,
        "certify_s_per_1000_draws": certify_s / ((args.n0 + args.n) / 1000),
    }


def table(results: dict) -> str:
    s, dev = results["settings"], results["device"]
    host = results["certify_host_noise_s"]
    rows = [
        f"{dev['name']} ({dev['type']}, {dev['cpu_threads']} CPU threads), torch {dev['torch']}; inputs "
        f"{results['sizes']['input_shapes']}, width {results['sizes']['encoder_width']}; CERTIFY n0 {s['n0']} + n {s['n']}, "
        f"{s['draws_per_pass']} draws per pass, {s['scopes']} scopes, median of {s['clips']} clips",
        f"{'certify one clip, every scope':40s} {results['certify_s']:10.3f} s",
        *([f"{'  with noise drawn on the host':40s} {host:10.3f} s ({host / results['certify_s']:.1f}x)"] if host else []),
        f"{'  per 1000 draws (n0 + n)':40s} {results['certify_s_per_1000_draws']:10.3f} s",
        f"{'l2-PGD pass + predictions, per clip':40s} {results['pgd_s']:10.4f} s (batch {results['sizes']['pgd_batch']})",
        f"{'certify / l2-PGD pass':40s} {results['certify_over_pgd']:10.0f}x",
    ]
    return "\n".join(rows)


def add_certify_arguments(parser: argparse.ArgumentParser, sigma: float, draws_per_pass: int, batch: str) -> None:
    """The options of a benchmark that certifies clips by smoothing: sizes, device, batch (``batch`` says what it
    holds), clips, and CERTIFY's sigma, n0, n and draws per forward pass (defaults ``sigma``, 64, 1000,
    ``draws_per_pass``)."""
    parser.add_argument("--sizes", choices=("tiny", "embedded", "paper"), default="tiny",
                        help="benchmarks.scale's tiny or paper sizes (K=31, 224x224, w64), or the embedded data's")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, help=f"{batch} (benchmarks.scale's batch)")
    parser.add_argument("--clips", type=int, default=3, help="clips certified by smoothing (after one warm-up; default 3)")
    parser.add_argument("--sigma", type=float, default=sigma)
    parser.add_argument("--n0", type=int, default=64)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--draws-per-pass", type=int, default=draws_per_pass)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_certify_arguments(parser, sigma=0.5, draws_per_pass=500, batch="clips in the l2-PGD batch")
    parser.add_argument("--eps", type=float, default=0.5, help="l2-PGD joint budget (the cost does not depend on it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/smoothing.json"))
    args = parser.parse_args(argv)
    results = run_benchmark(args)
    emit(results, table(results), args.out)
    return results


if __name__ == "__main__":
    main()
