"""``python -m benchmarks.sound_certificate``: what a sound certificate costs per test clip with 1-Lipschitz encoders,
against randomized smoothing of the same clips with the same model, at tiny CPU sizes (default), the embedded data's
(``--sizes embedded``) or the paper's (``--sizes paper``), on CPU or one GPU.

The model is CRMT-JT with ``encoder="lipschitz"`` at :mod:`benchmarks.scale`'s sizes with its initial weights, in
evaluation mode (the cost does not depend on the weights); inputs are random and resident on the device.

- ``sound_s``: the sound certificate of a batch of clips, every scope (joint and each modality): the sound pair
  table (the encoders' bounds and the head's row differences, once per batch here, once per model in the report),
  one forward pass in float32 without TF32 (as the report's), the radii with the rounding margin; seconds per clip
  (batch seconds / batch size).
- ``smoothing_s``: CERTIFY (``--n0`` + ``--n`` draws, ``--draws-per-pass`` per forward) of one clip in every scope,
  as the report's ``SmoothingCertifier`` does, seconds per clip (:func:`benchmarks.smoothing.certify_seconds`).
- ``smoothing_over_sound``: how many sound certificates one smoothed one costs.

Medians over ``--repeats`` rounds (sound) and ``--clips`` clips (smoothing), after one warm-up of each. Prints one
JSON line and a table; writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.progress import note
from benchmarks.scale import PAPER, TINY, clock, device_info, emit, pick_device, synthetic_batches
from benchmarks.smoothing import EMBEDDED, add_certify_arguments, certify_seconds
from crmt.robustness.certificates import sound_pair_lipschitz
from crmt.robustness.modes import exact_float32
from crmt.robustness.records import CONSTRUCTION_LIPSCHITZ_SOURCE, CertifiedRadii
from crmt.robustness.smoothing import SmoothingSettings
from crmt.strategies.crmt import CRMTJointTraining


def sound_seconds_per_clip(model: CRMTJointTraining, batch: dict[str, torch.Tensor], repeats: int) -> float:
    """Median seconds per clip of the sound certificate of ``batch`` in every scope, after one warm-up."""
    inputs, labels = model.inputs(batch), batch["label"]
    times = []
    for round_index in range(repeats + 1):
        start = clock(labels.device)
        with torch.no_grad(), exact_float32():
            table = sound_pair_lipschitz(model)
            logits = model(inputs).logits
            CertifiedRadii.of(CONSTRUCTION_LIPSCHITZ_SOURCE, table, logits, labels, model.modalities)
        if round_index > 0:
            times.append(clock(labels.device) - start)
    return statistics.median(times) / labels.shape[0]


def run_benchmark(args: argparse.Namespace) -> dict:
    """Every measurement of the module docstring, as a JSON-ready dict."""
    base = {"tiny": TINY, "embedded": EMBEDDED, "paper": PAPER}[args.sizes]
    sizes = replace(base, batches=1, batch=args.batch or base.batch)
    if args.clips >= sizes.batch:
        raise SystemExit(f"--clips must be below the batch size {sizes.batch} (one clip warms up)")
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = CRMTJointTraining(sizes.num_classes, sizes.input_shapes, sizes.encoder_width, encoder="lipschitz")
    model = model.to(device).eval()
    (batch,) = synthetic_batches(sizes, device)
    settings = SmoothingSettings(sigma=args.sigma, n0=args.n0, n=args.n, batch=args.draws_per_pass)
    note("sound certificate", f"{args.repeats} + 1 sound certificates of a batch of {sizes.batch} and CERTIFY of 1 + "
                              f"{args.clips} clips at {args.sizes} sizes on the {device.type} (n0 {args.n0} + n {args.n})")
    sound_s = sound_seconds_per_clip(model, batch, args.repeats)
    smoothing_s = certify_seconds(model, batch, settings, args.clips, device)
    return {
        "device": device_info(device),
        "sizes": {"num_classes": sizes.num_classes, "input_shapes": sizes.input_shapes, "batch": sizes.batch,
                  "encoder_width": sizes.encoder_width, "encoder": "lipschitz"},
        "settings": {"sigma": args.sigma, "n0": args.n0, "n": args.n, "draws_per_pass": args.draws_per_pass,
                     "scopes": 1 + len(sizes.input_shapes), "clips": args.clips, "repeats": args.repeats},
        "sound_s": sound_s,
        "smoothing_s": smoothing_s,
        "smoothing_over_sound": smoothing_s / sound_s,
    }


def table(results: dict) -> str:
    s, dev = results["settings"], results["device"]
    return "\n".join([
        f"{dev['name']} ({dev['type']}, {dev['cpu_threads']} CPU threads), torch {dev['torch']}; inputs "
        f"{results['sizes']['input_shapes']}, Lipschitz encoders of width {results['sizes']['encoder_width']}",
        f"{'sound certificate, every scope, per clip':44s} {results['sound_s']:12.5f} s (batch {results['sizes']['batch']})",
        f"{'smoothing CERTIFY, every scope, per clip':44s} {results['smoothing_s']:12.3f} s (n0 {s['n0']} + n {s['n']})",
        f"{'smoothing / sound':44s} {results['smoothing_over_sound']:12.0f}x",
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_certify_arguments(parser, sigma=1.0, draws_per_pass=1000, batch="clips per sound-certificate batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/sound_certificate.json"))
    args = parser.parse_args(argv)
    results = run_benchmark(args)
    emit(results, table(results), args.out)
    return results


if __name__ == "__main__":
    main()
