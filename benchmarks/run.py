"""``make bench``: the tau~ estimator and the cached step 2, reported as speed ratios.

1. tau~ estimator on a ResNet18 audio encoder (K classes, one batch), against
   - the naive per-class loop of the official code (``.backward()`` per class, which also
     computes every parameter gradient),
   - its own lower limit: one forward plus K input-only backward passes, timed bare,
   - the batched VJP (``is_grads_batched``), the alternative method.
2. Step 2 for E epochs on cached scores (one encoder pass, then a^(m) updates only)
   against step 2 that recomputes the encoder forwards every epoch.

Results are printed as a table and written to runs/bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.progress import Rounds, note
from crmt.models.encoders import FrameEncoder, SpectrogramEncoder
from crmt.robustness.certify import runner_up_bound
from crmt.robustness.lipschitz import score_gradient_norms
from crmt.models.heads import OrthogonalFusion


def interleaved_median_seconds(
    candidates: dict[str, Callable[[], object]], repeats: int, tag: str | None = None, what: str = "",
) -> dict[str, float]:
    """Median wall time of each candidate over ``repeats`` rounds, after one warm-up round.

    Each round runs every candidate once, so slow drifts of the machine (frequency, other
    load) affect all candidates alike and the ratios stay fair. With ``tag``, one line per round
    (``what``, then each candidate's seconds as it finishes: :class:`benchmarks.progress.Rounds`).
    """
    times: dict[str, list[float]] = {name: [] for name in candidates}
    rounds = Rounds(tag, what, repeats + 1)
    for round_index in range(repeats + 1):
        rounds.start(round_index)
        for number, (name, fn) in enumerate(candidates.items()):
            start = time.perf_counter()
            fn()
            seconds = time.perf_counter() - start
            rounds.done(name, seconds, number == len(candidates) - 1)
            if round_index > 0:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def official_style_norms(encoder: torch.nn.Module, weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Per class: backward of the batch-summed score with ``.backward()``, accumulating parameter gradients."""
    x = inputs.detach().requires_grad_(True)
    scores = encoder(x) @ weight.T
    norms = []
    for k in range(weight.shape[0]):
        encoder.zero_grad()
        x.grad = None
        scores[:, k].sum().backward(retain_graph=k + 1 < weight.shape[0])
        norms.append(x.grad.flatten(1).norm(dim=1))
    return torch.stack(norms, dim=1)


def bench_tau(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    encoder = SpectrogramEncoder(1, args.width).eval()
    weight = torch.linalg.qr(torch.randn(encoder.out_dim, args.classes))[0].T.contiguous()
    inputs = torch.randn(args.batch, 1, args.mel_bins, args.audio_frames)
    score_fn = lambda x: encoder(x) @ weight.T  # noqa: E731

    def lower_limit() -> None:
        x = inputs.detach().requires_grad_(True)
        scores = score_fn(x)
        for k in range(args.classes):
            torch.autograd.grad(scores[:, k].sum(), x, retain_graph=k + 1 < args.classes)

    results = interleaved_median_seconds(
        {
            "tau_loop_s": lambda: score_gradient_norms(score_fn, inputs, "loop"),
            "tau_batched_s": lambda: score_gradient_norms(score_fn, inputs, "batched"),
            "tau_official_style_s": lambda: official_style_norms(encoder, weight, inputs),
            "tau_lower_limit_s": lower_limit,
        },
        args.repeats, "run", "tau~",
    )
    reference = score_gradient_norms(score_fn, inputs, "loop")[1]
    torch.testing.assert_close(official_style_norms(encoder, weight, inputs), reference, rtol=1e-4, atol=1e-6)
    return results


def bench_step2(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    visual_encoder = FrameEncoder(3, args.step2_width).eval()
    audio_encoder = SpectrogramEncoder(1, args.step2_width).eval()
    head = OrthogonalFusion([visual_encoder.out_dim, audio_encoder.out_dim], args.classes)
    visual = torch.randn(args.step2_samples, 3, 3, args.frame_size, args.frame_size)
    audio = torch.randn(args.step2_samples, 1, args.mel_bins, args.step2_audio_frames)
    labels = torch.randint(0, args.classes, (args.step2_samples,))
    tau = torch.rand(2, args.classes) + 0.5

    @torch.no_grad()
    def encode() -> torch.Tensor:
        chunks = []
        for start in range(0, args.step2_samples, args.batch):
            stop = start + args.batch
            chunks.append(head.uni_modal_scores([visual_encoder(visual[start:stop]), audio_encoder(audio[start:stop])]))
        return torch.cat(chunks, dim=1)

    def update(scores: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        for start in range(0, args.step2_samples, args.batch):
            stop = start + args.batch
            bound = runner_up_bound(scores[:, start:stop], head.integration, head.bias.detach(), tau, labels[start:stop])
            (grad,) = torch.autograd.grad(-bound.mean(), head.integration)
            head.integration.grad = grad
            optimizer.step()

    def cached() -> None:
        optimizer = torch.optim.Adam([head.integration], lr=1e-2)
        scores = encode()
        for _ in range(args.step2_epochs):
            update(scores, optimizer)

    def recomputed() -> None:
        optimizer = torch.optim.Adam([head.integration], lr=1e-2)
        for _ in range(args.step2_epochs):
            update(encode(), optimizer)

    return interleaved_median_seconds({"step2_cached_s": cached, "step2_recomputed_s": recomputed}, args.repeats,
                                      "run", "step 2")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=31, help="K (31: Kinetics-Sounds)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=64, help="ResNet18 width for the tau~ benchmark (64: paper)")
    parser.add_argument("--mel-bins", type=int, default=128)
    parser.add_argument("--audio-frames", type=int, default=256, help="fbank frames for the tau~ benchmark")
    parser.add_argument("--step2-width", type=int, default=16)
    parser.add_argument("--step2-samples", type=int, default=256)
    parser.add_argument("--step2-audio-frames", type=int, default=128)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--step2-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/results.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    threads = torch.get_num_threads()
    note("run", f"tau~ estimator (ResNet18 audio, width {args.width}, K={args.classes}, batch {args.batch}, input "
                f"1x{args.mel_bins}x{args.audio_frames}, {threads} threads): 4 methods x (1 warm-up + {args.repeats}) "
                "rounds, then step 2 on cached scores against recomputed ones, as many rounds "
                "(at the default sizes about 3.5 min on 2 quiet cores, several times that on busy ones)")
    results = {"threads": threads, **bench_tau(args), **bench_step2(args)}
    ratios = {
        "official_style / loop": results["tau_official_style_s"] / results["tau_loop_s"],
        "loop / lower_limit": results["tau_loop_s"] / results["tau_lower_limit_s"],
        "batched / loop": results["tau_batched_s"] / results["tau_loop_s"],
        "step2 recomputed / cached": results["step2_recomputed_s"] / results["step2_cached_s"],
    }
    print(f"tau~ estimator: ResNet18 audio (width {args.width}), K={args.classes}, batch {args.batch}, "
          f"input 1x{args.mel_bins}x{args.audio_frames}, {results['threads']} threads")
    for key in ("tau_loop_s", "tau_batched_s", "tau_official_style_s", "tau_lower_limit_s"):
        print(f"  {key:24s} {results[key]:8.3f} s")
    print(f"step 2: {args.step2_samples} clips, {args.step2_epochs} epochs, encoders width {args.step2_width}")
    for key in ("step2_cached_s", "step2_recomputed_s"):
        print(f"  {key:24s} {results[key]:8.3f} s")
    print("ratios (>1 means the first is slower):")
    for name, value in ratios.items():
        print(f"  {name:28s} {value:6.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "seconds": results, "ratios": ratios}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
