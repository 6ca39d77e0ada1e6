"""``python -m benchmarks.scale``: the model side of CRMT-JT at CPU or paper sizes, on CPU or one GPU.

Synthetic random inputs stay resident on the device (no decoding, no host-to-device copies), so
every number is the model's cost. Each group of candidates runs interleaved: one untimed warm-up
round (also the memory reading), then ``--repeats`` rounds; a value is the median over rounds.

1. Step-1 training rate (clips/s) of ``CRMTJointTraining`` fit by a real ``lightning.Trainer``
   (manual optimization; no logger, checkpoint, progress bar or summary) and of a plain PyTorch
   loop doing the same computation (forward, CE + rho * L1, backward, Adam step) on the same model.
   A run times ``--steps`` steps after ``--warmup`` untimed ones; CUDA is synchronised before each
   clock read. ``lightning_overhead = plain rate / Lightning rate``: 1.00 is no overhead (target <= 1.05).
2. The same under bf16 autocast (``precision="bf16-mixed"`` / ``torch.autocast``):
   ``bf16_speedup = bf16 rate / fp32 rate``. The plain loop also runs on a copy of the model in
   channels_last layout (:func:`crmt.models.layout.use_channels_last`, what the ``ChannelsLast``
   callback does): ``channels_last_speedup = channels_last rate / default-layout rate``.
3. tau~ estimation (``LipschitzEstimator.scores``) over N = ``--batches`` x batch clips, "loop" and
   "batched", against its lower limit (one forward plus K bare input-only backward passes per
   modality and batch): ``*_over_lower_limit = seconds / lower-limit seconds`` (1.00: at the limit);
   ``batched_max_rel_diff``: the largest |tau~ batched - tau~ loop| over the largest tau~.
4. One step-2 epoch (Adam updates of a^(m) only, one per batch of rows of the cached (M, N, K)
   scores of 3.) against one step-1 epoch (plain loop, fp32) over the same N clips:
   ``step1_over_step2`` is how many times cheaper step 2 is.
5. Peak memory of each candidate's warm-up run, MiB. CUDA: ``torch.cuda.max_memory_allocated`` after
   a reset; it includes the model and the resident inputs (``memory_mib.resident``). CPU: the process
   peak RSS after the run; it never decreases, so a candidate only shows what it needs beyond every
   earlier one.

Prints one JSON line, then a table; writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from crmt.losses import margin_regularizer
from crmt.models.layout import use_channels_last
from crmt.robustness.certificates import LipschitzEstimator, score_function
from crmt.robustness.lipschitz import GradientMethod
from crmt.robustness.modes import eval_mode
from crmt.strategies.base import PAPER_INPUT_SHAPES, Batch
from crmt.strategies.crmt import CRMTJointTraining, ScoreCache, cached_runner_up_bound

Measured = tuple[dict[str, float | None], dict[str, float | None], dict[str, str]]
"""Medians per candidate, peak memory (MiB) per candidate, error message per failed candidate."""


@dataclass(frozen=True)
class Sizes:
    """Model and run sizes; N = batches * batch clips for tau~ and the epochs."""

    num_classes: int
    input_shapes: dict[str, list[int]]
    batch: int
    encoder_width: int
    batches: int
    warmup: int
    steps: int
    repeats: int


TINY = Sizes(6, {"visual": [3, 3, 32, 32], "audio": [1, 64, 64]}, 8, 8, 2, 1, 3, 2)
PAPER = Sizes(31, PAPER_INPUT_SHAPES, 64, 64, 2, 5, 20, 2)


def build_model(sizes: Sizes) -> CRMTJointTraining:
    """CRMT-JT for a one-epoch fit in step 1 (step1_epochs=1, step2_epochs=0: no phase switch), Adam."""
    return CRMTJointTraining(sizes.num_classes, sizes.input_shapes, sizes.encoder_width, step1_epochs=1, step2_epochs=0)


def synthetic_batches(sizes: Sizes, device: torch.device) -> list[Batch]:
    """``sizes.batches`` batches on ``device``: each input (B, *shape), label (B,), dataset index (B,)."""
    batches = []
    for b in range(sizes.batches):
        batch = {name: torch.randn(sizes.batch, *shape, device=device) for name, shape in sizes.input_shapes.items()}
        batch["label"] = torch.randint(0, sizes.num_classes, (sizes.batch,), device=device)
        batch["index"] = torch.arange(b * sizes.batch, (b + 1) * sizes.batch, device=device)
        batches.append(batch)
    return batches


def clock(device: torch.device) -> float:
    """perf_counter once the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def clips_per_s(loader: list[Batch], warmup: int, seconds: float) -> float:
    """Clips of the batches after the first ``warmup`` per second."""
    return (len(loader) - warmup) * loader[0]["label"].shape[0] / seconds


@dataclass
class Batches:
    """A list of batches as one loader (Lightning reads a plain list as a list of loaders)."""

    batches: list[Batch]

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepClock(Callback):
    """Reads the clock after batch ``warmup - 1`` and after the last batch."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total, self.marks = warmup, total, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx in (self.warmup - 1, self.total - 1):
            self.marks.append(clock(pl_module.device))


def lightning_step1(model: CRMTJointTraining, loader: list[Batch], warmup: int, bf16: bool) -> float:
    """Step-1 rate (clips/s) of one ``Trainer.fit`` epoch over ``loader``, after ``warmup`` >= 1 batches."""
    step_clock = StepClock(warmup, len(loader))
    trainer = Trainer(
        accelerator=loader[0]["label"].device.type,
        devices=1,
        precision="bf16-mixed" if bf16 else "32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[step_clock],
    )
    trainer.fit(model, train_dataloaders=Batches(loader))  # leaves the model on the CPU
    start, stop = step_clock.marks
    return clips_per_s(loader, warmup, stop - start)


def plain_step1(model: CRMTJointTraining, loader: list[Batch], warmup: int, bf16: bool) -> float:
    """Step-1 rate (clips/s) of a plain loop doing ``CRMTJointTraining._step1_update``, after ``warmup`` batches.

    The whole step runs under autocast, backward included, as Lightning runs ``training_step``.
    """
    device = loader[0]["label"].device
    model.to(device).train()
    optimizer = model.optimizer_factory(model.parameters())
    start = clock(device)
    for step, batch in enumerate(loader):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            output = model([batch[name] for name in model.modalities])
            labels = batch["label"]
            margin = margin_regularizer(output.scores, labels)
            loss = F.cross_entropy(output.logits, labels) + model.hparams.rho * margin
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step == warmup - 1:
            start = clock(device)
    return clips_per_s(loader, warmup, clock(device) - start)


def estimate_tau(
    model: CRMTJointTraining, data: list[Batch], method: GradientMethod
) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase switch's pass (the project's one estimator), fp32 in eval mode: cached scores (M, N, K)
    and tau~ (M, K)."""
    estimator = LipschitzEstimator(model.to(data[0]["label"].device), method)
    scores = [estimator.scores(model.inputs(batch)) for batch in data]
    return torch.cat(scores, dim=1), estimator.class_lipschitz()


def lower_limit(model: CRMTJointTraining, data: list[Batch]) -> None:
    """Per batch and modality: one forward, then K input-only backward passes of the scalar sum_i s_k(x_i)."""
    with eval_mode(model.to(data[0]["label"].device)), torch.enable_grad():
        for batch in data:
            for m, inputs in enumerate(model.inputs(batch)):
                x = inputs.detach().requires_grad_(True)
                scores = score_function(model, m)(x)
                for k in range(model.num_classes):
                    torch.autograd.grad(scores[:, k].sum(), x, retain_graph=k + 1 < model.num_classes)


def step2_epoch(
    model: CRMTJointTraining, scores: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor, batch: int,
    optimizer: torch.optim.Optimizer,
) -> None:
    """One epoch of ``_step2_update``: one a^(m) update per ``batch`` rows of scores (M, N, K), labels (N,)."""
    head = model.head
    cache = ScoreCache(scores, labels, torch.ones_like(labels, dtype=torch.bool))
    for start in range(0, scores.shape[1], batch):
        index = torch.arange(start, min(start + batch, scores.shape[1]), device=scores.device)
        bound = cached_runner_up_bound(cache, index, head.integration, head.bias.detach(), tau)
        (grad,) = torch.autograd.grad(-bound.mean(), head.integration)
        optimizer.zero_grad()
        head.integration.grad = grad
        optimizer.step()


def peak_mib(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process peak RSS (never decreases). MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20


def interleaved(
    candidates: dict[str, Callable[[], float | None]], repeats: int, device: torch.device,
    optional: frozenset[str] = frozenset(),
) -> Measured:
    """Median over ``repeats`` rounds, after one warm-up round, of each candidate's measurement: the
    value it returns, or its wall seconds where it returns None.

    A RuntimeError (e.g. CUDA out of memory) of a candidate in ``optional`` is recorded and the
    candidate dropped (its values None); any other error propagates.
    """
    values: dict[str, list[float]] = {name: [] for name in candidates}
    memory: dict[str, float | None] = dict.fromkeys(candidates)
    errors: dict[str, str] = {}
    for round_index in range(repeats + 1):
        for name, run in candidates.items():
            if name in errors:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                start = clock(device)
                value = run()
                value = clock(device) - start if value is None else value
            except RuntimeError as error:
                if name not in optional:
                    raise
                errors[name] = str(error).splitlines()[0]
            if name in errors:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            elif round_index == 0:
                memory[name] = peak_mib(device)
            else:
                values[name].append(value)
    return {name: statistics.median(v) if v else None for name, v in values.items()}, memory, errors


def bench_step1(model: CRMTJointTraining, data: list[Batch], sizes: Sizes) -> Measured:
    """Clips/s of {lightning, plain, plain in channels_last} x {fp32, bf16}, each run over warmup + steps
    batches cycling ``data``."""
    loader = [data[i % len(data)] for i in range(sizes.warmup + sizes.steps)]
    nhwc = copy.deepcopy(model)
    use_channels_last(nhwc)
    runners = {"lightning": (lightning_step1, model), "plain": (plain_step1, model), "plain_cl": (plain_step1, nhwc)}
    candidates = {
        f"{runner}_{precision}": lambda fn=fn, net=net, bf16=precision == "bf16": fn(net, loader, sizes.warmup, bf16)
        for precision in ("fp32", "bf16")
        for runner, (fn, net) in runners.items()
    }
    return interleaved(candidates, sizes.repeats, data[0]["label"].device)


def bench_tau(
    model: CRMTJointTraining, data: list[Batch], sizes: Sizes
) -> tuple[Measured, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Seconds of tau~ "loop", "batched" and the lower limit over ``data``; and each method's (scores, tau~)."""
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    candidates = {
        name: lambda name=name: outputs.__setitem__(name, estimate_tau(model, data, name))
        for name in ("loop", "batched")
    }
    candidates["lower_limit"] = lambda: lower_limit(model, data)
    measured = interleaved(candidates, sizes.repeats, data[0]["label"].device, optional=frozenset({"batched"}))
    return measured, outputs


def bench_epochs(
    model: CRMTJointTraining, data: list[Batch], sizes: Sizes, scores: torch.Tensor, tau: torch.Tensor
) -> Measured:
    """Seconds of one step-1 epoch (plain loop, fp32) and one step-2 epoch over the N clips of ``data``."""
    labels = torch.cat([batch["label"] for batch in data])
    optimizer = model.step2_optimizer_factory([model.head.integration])
    candidates = {
        "step1_epoch": lambda: len(labels) / plain_step1(model, data, 0, False),
        "step2_epoch": lambda: step2_epoch(model, scores, labels, tau, sizes.batch, optimizer),
    }
    return interleaved(candidates, max(sizes.repeats, 5), data[0]["label"].device)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def device_info(device: torch.device) -> dict:
    """The device, the thread count, versions and the precision settings that change fp32 speed."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "type": device.type, "name": name, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "lightning": lightning.__version__, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32, "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def run_benchmark(sizes: Sizes, device: torch.device) -> dict:
    """Every measurement of the module docstring, as a JSON-ready dict."""
    torch.manual_seed(0)
    model = build_model(sizes).to(device)
    data = synthetic_batches(sizes, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resident = peak_mib(device)
    step1, memory_step1, _ = bench_step1(model, data, sizes)
    (tau_s, memory_tau, errors), outputs = bench_tau(model, data, sizes)
    scores, tau = outputs["loop"]
    epoch_s, memory_epoch, _ = bench_epochs(model, data, sizes, scores, tau)
    batched_tau = outputs["batched"][1] if "batched" in outputs else None
    return {
        "device": device_info(device),
        "sizes": asdict(sizes) | {"clips": len(data) * sizes.batch},
        "precision": {"fp32": "32-true", "bf16": "bf16-mixed"},
        "step1_clips_per_s": step1,
        "step1_ratios": {
            "lightning_overhead_fp32": ratio(step1["plain_fp32"], step1["lightning_fp32"]),
            "lightning_overhead_bf16": ratio(step1["plain_bf16"], step1["lightning_bf16"]),
            "bf16_speedup_lightning": ratio(step1["lightning_bf16"], step1["lightning_fp32"]),
            "bf16_speedup_plain": ratio(step1["plain_bf16"], step1["plain_fp32"]),
            "bf16_speedup_plain_cl": ratio(step1["plain_cl_bf16"], step1["plain_cl_fp32"]),
            "channels_last_speedup_fp32": ratio(step1["plain_cl_fp32"], step1["plain_fp32"]),
            "channels_last_speedup_bf16": ratio(step1["plain_cl_bf16"], step1["plain_bf16"]),
        },
        "tau_s": tau_s,
        "tau_ratios": {
            "loop_over_lower_limit": ratio(tau_s["loop"], tau_s["lower_limit"]),
            "batched_over_lower_limit": ratio(tau_s["batched"], tau_s["lower_limit"]),
            "batched_over_loop": ratio(tau_s["batched"], tau_s["loop"]),
            "batched_max_rel_diff": None if batched_tau is None else float((batched_tau - tau).abs().max() / tau.max()),
        },
        "epoch_s": epoch_s | {"step1_over_step2": ratio(epoch_s["step1_epoch"], epoch_s["step2_epoch"])},
        "memory_mib": {
            "kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss_never_decreasing",
            "resident": resident,
            **{f"step1_{name}": value for name, value in memory_step1.items()},
            **{f"tau_{name}": value for name, value in memory_tau.items()},
            **memory_epoch,
        },
        "errors": errors,
    }


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def table(results: dict) -> str:
    """The results as a human-readable table: a label, three value columns, the peak memory."""
    dev, sizes, rate, ratios, tau, epoch, memory = (
        results[key]
        for key in ("device", "sizes", "step1_clips_per_s", "step1_ratios", "tau_s", "epoch_s", "memory_mib")
    )
    peak = "peak MiB" if memory["kind"] == "cuda_max_allocated" else "process peak RSS MiB (never decreases)"
    runners = (("lightning", "Lightning Trainer.fit"), ("plain", "plain PyTorch loop"), ("plain_cl", "plain, channels_last"))
    rows = [
        ("step 1, clips/s", "fp32", "bf16", "bf16/fp32", f"{peak}: fp32 / bf16"),
        *(
            (f"  {label}", fmt(rate[f"{r}_fp32"], ".2f"), fmt(rate[f"{r}_bf16"], ".2f"),
             fmt(ratios[f"bf16_speedup_{r}"], ".2f", "x"),
             f"{fmt(memory[f'step1_{r}_fp32'], '.0f')} / {fmt(memory[f'step1_{r}_bf16'], '.0f')}")
            for r, label in runners
        ),
        ("  overhead plain/Lightning", fmt(ratios["lightning_overhead_fp32"], ".3f", "x"),
         fmt(ratios["lightning_overhead_bf16"], ".3f", "x"), "", ""),
        ("  channels_last speed-up", fmt(ratios["channels_last_speedup_fp32"], ".2f", "x"),
         fmt(ratios["channels_last_speedup_bf16"], ".2f", "x"), "", ""),
        ("tau~ over N clips", "seconds", "x limit", "", peak),
        *(
            (f"  {name}", fmt(tau[name], ".3f"), fmt(ratio(tau[name], tau["lower_limit"]), ".2f", "x"), "",
             fmt(memory[f"tau_{name}"], ".0f"))
            for name in ("loop", "batched", "lower_limit")
        ),
        ("  batched vs loop max diff", fmt(results["tau_ratios"]["batched_max_rel_diff"], ".1e"), "", "", ""),
        ("one epoch over N clips", "seconds", "", "", peak),
        ("  step 1 (plain loop, fp32)", fmt(epoch["step1_epoch"], ".4f"), "", "", fmt(memory["step1_epoch"], ".0f")),
        ("  step 2 (cached scores)", fmt(epoch["step2_epoch"], ".4f"), "", "", fmt(memory["step2_epoch"], ".0f")),
        ("  step 1 / step 2", fmt(epoch["step1_over_step2"], ".0f", "x"), "", "", ""),
    ]
    return "\n".join([
        f"{dev['name']} ({dev['type']}, {dev['cpu_threads']} CPU threads), torch {dev['torch']}, "
        f"lightning {dev['lightning']}; K={sizes['num_classes']}, inputs {sizes['input_shapes']}, "
        f"batch {sizes['batch']}, width {sizes['encoder_width']}, N={sizes['clips']} clips; "
        f"{sizes['steps']} timed steps after {sizes['warmup']}; median of {sizes['repeats']} rounds",
        *(f"{a:30s}{b:>10s}{c:>10s}{d:>11s}   {e}".rstrip() for a, b, c, d, e in rows),
        f"before the phases (model + resident inputs): {fmt(memory['resident'], '.0f')} {peak}",
        *(f"error in {name}: {message}" for name, message in results["errors"].items()),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-sizes", action="store_true", help="K=31, 3x3x224x224 frames, 1x128x1024 fbank, ...")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    default = "default {}, {} with --paper-sizes".format
    parser.add_argument("--batch", type=int, help=f"clips per batch ({default(TINY.batch, PAPER.batch)})")
    parser.add_argument("--steps", type=int, help=f"timed step-1 steps per run ({default(TINY.steps, PAPER.steps)})")
    parser.add_argument("--warmup", type=int, help=f"untimed steps before them ({default(TINY.warmup, PAPER.warmup)})")
    parser.add_argument("--batches", type=int, help=f"N / batch ({default(TINY.batches, PAPER.batches)})")
    parser.add_argument("--repeats", type=int, help=f"timed rounds ({default(TINY.repeats, PAPER.repeats)})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/scale.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    for key in ("batch", "steps", "warmup", "batches", "repeats", "threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = {key: getattr(args, key) for key in ("batch", "steps", "warmup", "batches", "repeats")}
    sizes = replace(PAPER if args.paper_sizes else TINY, **{k: v for k, v in overrides.items() if v is not None})
    device = pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run_benchmark(sizes, device)
    emit(results, table(results), args.out)
    return results


def emit(results: dict, text: str, out: Path) -> None:
    """Print ``results`` as one JSON line, then ``text`` (a table); write the JSON to ``out``."""
    print(json.dumps(results))
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


def pick_device(choice: str) -> torch.device:
    """``--device``: "cuda", "cpu", or "auto" (CUDA when available)."""
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # per-fit device lines and tips
    main()
