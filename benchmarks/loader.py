"""Loader throughput at the paper's input sizes: decoding on the fly vs reading the cache, against
the training throughput of ResNet18 (width 64) CRMT-JT on this machine.

Fake Kinetics-Sounds clips (10 s, 320x240, 25 fps H.264, 44.1 kHz stereo AAC: what YouTube
downloads look like) are generated once under ``--work-dir``. The training loader of
:class:`KineticsSoundsDataModule` (paper defaults: 3 frames at 1 fps, 224x224, cropped and
flipped; 128 x 1024 Kaldi fbank) is timed with ``--workers`` DataLoader workers, first
decoding on the fly, then from a cache filled by ``prepare_cache`` (whose throughput is timed
too). The training step is CRMT-JT step 1 (forward, CE + rho * L1, backward, SGD step) at
``--batch`` on random inputs of the same shapes, with every core. One training sample read from the
cache in this process is timed against the same clips in the cache's first layout (every frame in
one member; now a sample reads only the 3 frames it uses).

Prints a table and writes ``runs/bench/loader.json``: ``python -m benchmarks.loader``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.progress import note
from benchmarks.run import interleaved_median_seconds
from data_modules import KineticsSoundsDataModule
from data_modules.cache import ClipCache
from data_modules.clips import ClipDataset
from data_modules.encoding import write_mp4

WIDTH, HEIGHT = 320, 240


def fake_clip(index: int, seconds: float, fps: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (T, 240, 320, 3) frames (a smooth gradient, a moving square, mild noise) and float32
    (2, n) stereo audio (a chord with noise)."""
    rng = np.random.default_rng(index)
    count = round(seconds * fps)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 40 * (index % 6))], -1).astype(np.int16)
    video = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(count):
        frame = background + rng.integers(-8, 9, background.shape)
        left, top = (4 * t + 13 * index) % (WIDTH - 60), 90 + int(40 * math.sin(t / 10))
        frame[top : top + 60, left : left + 60] = (220, 60 + 20 * (index % 8), 90)
        video[t] = np.clip(frame, 0, 255)
    n = round(seconds * rate)
    time_axis = np.arange(n) / rate
    chord = sum(np.sin(2 * math.pi * (220 + 50 * index) * k * time_axis) / k for k in (1, 2, 3))
    audio = 0.2 * chord + 0.02 * rng.standard_normal(n)
    return video, np.stack([audio, 0.8 * audio]).astype(np.float32)


def write_fake_clip(media: Path, index: int, seconds: float) -> str:
    """Write fake clip ``index`` under ``media``; its line of the train list (name, label)."""
    name = f"bench{index:06d}_000000_000010"
    video, audio = fake_clip(index, seconds, fps=25, rate=44100)
    write_mp4(media / f"{name}.mp4", video=video, audio=audio, fps=25, audio_rate=44100)
    return f"{name} {index % 31}"


def make_dataset(folder: Path, clips: int, seconds: float, processes: int = 1) -> dict[str, Path]:
    """A Kinetics-Sounds folder of ``clips`` fake clips with a CRMT train list (reused when complete),
    written by ``processes`` processes."""
    media, listing = folder / "media", folder / "ks_train.txt"
    if listing.is_file() and len(listing.read_text().split("\n")) - 1 == clips:
        return {"root": media, "list": listing}
    media.mkdir(parents=True, exist_ok=True)
    write = partial(write_fake_clip, media, seconds=seconds)
    if processes > 1:
        with multiprocessing.Pool(processes) as pool:
            lines = pool.map(write, range(clips))
    else:
        lines = list(map(write, range(clips)))
    listing.write_text("\n".join(lines) + "\n")
    return {"root": media, "list": listing}


def loader_throughput(data: KineticsSoundsDataModule, epochs: int) -> dict[str, float]:
    """Clips per second of the training loader over ``epochs`` passes (worker start-up included: once
    with the data module's ``persistent_workers``, every pass without)."""
    data.setup("fit")
    loader = data.train_dataloader()
    clips = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            clips += batch["label"].shape[0]
    seconds = time.perf_counter() - start
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / max(seconds, 1e-9)}


def layout_comparison(data: KineticsSoundsDataModule, folder: Path, rounds: int) -> dict[str, float]:
    """Milliseconds per training sample (``ClipDataset.__getitem__`` in this process) reading the cache
    as written (frames one member per step: a sample reads the 3 it uses) and a copy of it written
    in the first layout (all frames in one member, read and CRC-checked whole); interleaved rounds,
    medians."""
    data.setup("fit")
    stepwise = data.datasets["train"]
    whole_cache = ClipCache(folder, data.cache.fields)
    for record in stepwise.records:
        with data.cache.open(record.key) as arrays:
            whole_cache.write(record.key, {name: array[range(len(array))] for name, array in arrays.items()})
    whole = ClipDataset(stepwise.records, data.settings, train=True, cache=whole_cache, seed=data.seed)
    clips = len(stepwise)

    def read_all(dataset: ClipDataset) -> None:
        for index in range(clips):
            dataset[(1, index)]

    seconds = interleaved_median_seconds({"stepwise": lambda: read_all(stepwise), "whole": lambda: read_all(whole)}, rounds)
    per_sample = {f"{name}_ms_per_clip": 1000 * value / clips for name, value in seconds.items()}
    return {**per_sample, "speedup": seconds["whole"] / max(seconds["stepwise"], 1e-12)}


def training_throughput(input_shapes: dict[str, list[int]], batch: int, steps: int) -> dict[str, float]:
    """Clips per second of CRMT-JT step-1 updates (ResNet18, width 64, 31 classes), median of ``steps``."""
    from crmt.strategies import CRMTJointTraining

    torch.manual_seed(0)
    model = CRMTJointTraining(num_classes=31, input_shapes=input_shapes, encoder_width=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    inputs = {name: torch.randn(batch, *shape) for name, shape in input_shapes.items()}
    inputs["label"] = torch.randint(0, 31, (batch,))
    model.train()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss, _ = model.step1_loss(inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"batch": batch, "step_s": seconds, "clips_per_s": batch / max(seconds, 1e-9)}


def folder_megabytes(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*.npz")) / 2**20


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="fake 10 s clips to generate (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader / prepare workers (default 2)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of loader and training step (default 16)")
    parser.add_argument("--epochs", type=int, default=2, help="loader passes over the clips (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (default 3, after one warm-up)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/loader"), help="fake clips and cache")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/loader.json"))
    parser.add_argument("--persistent", action="store_true", help="keep the workers alive between passes (cached loader)")
    parser.add_argument(
        "--cache-only", action="store_true",
        help="time only the cached loader: keep (and complete) the cache of an earlier run; no on-the-fly pass, no training step",
    )
    parser.add_argument(
        "--layout-rounds", type=int, default=5,
        help="interleaved rounds timing a sample read from the cache against the first cache layout (0: skip)",
    )
    args = parser.parse_args(argv)

    note("loader", f"{args.clips} fake {args.seconds:g} s clips in {args.work_dir} (generated once, reused), then the "
                   f"loader with {args.workers} workers: {'' if args.cache_only else 'decoding on the fly, '}"
                   f"preparing the cache, reading it{', the cache layouts' if args.layout_rounds else ''}"
                   f"{'' if args.cache_only else ', a training step'}")
    dataset = make_dataset(args.work_dir, args.clips, args.seconds, processes=max(args.workers, 1))
    cache_dir = args.work_dir / "cache"
    if not args.cache_only:
        shutil.rmtree(cache_dir, ignore_errors=True)

    def module(cache: Path | None) -> KineticsSoundsDataModule:
        return KineticsSoundsDataModule(
            str(dataset["root"]),
            str(dataset["list"]),
            str(dataset["list"]),
            cache_dir=str(cache) if cache else None,
            batch_size=args.batch,
            num_workers=args.workers,
            persistent_workers=args.persistent and cache is not None,
        )

    results: dict[str, object] = {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), **vars(args)}
    if not args.cache_only:
        note("loader", f"decoding on the fly, {args.epochs} pass{'' if args.epochs == 1 else 'es'}")
        results["on_the_fly"] = loader_throughput(module(None), args.epochs)
    cached = module(cache_dir)
    note("loader", "preparing the cache")
    start = time.perf_counter()
    report = cached.prepare_cache(workers=args.workers, progress=False)
    prepare_seconds = time.perf_counter() - start
    results["prepare"] = {
        "clips": report.written,
        "seconds": prepare_seconds,
        "clips_per_s": report.written / max(prepare_seconds, 1e-9),
        "failed": len(report.failed),
        "cache_mb_per_clip": folder_megabytes(cache_dir) / max(len(list(cache_dir.rglob("*.npz"))), 1),
    }
    note("loader", f"reading the cache, {args.epochs} pass{'' if args.epochs == 1 else 'es'}")
    results["from_cache"] = loader_throughput(cached, args.epochs)
    if args.layout_rounds:
        note("loader", f"one sample read from the cache in this process against the first layout, {args.layout_rounds} round(s)")
        results["cache_layout"] = layout_comparison(cached, args.work_dir / "cache-whole-frames", args.layout_rounds)
    if not args.cache_only:
        note("loader", f"CRMT-JT training steps (ResNet18 width 64, batch {args.batch}), 1 warm-up + {args.steps}")
        results["training"] = training_throughput(cached.input_shapes, args.batch, args.steps)
    results = {key: str(value) if isinstance(value, Path) else value for key, value in results.items()}

    train_rate = results["training"]["clips_per_s"] if "training" in results else None
    rows = [
        ("loader, decoding on the fly", results.get("on_the_fly", {}).get("clips_per_s")),
        ("loader, reading the cache", results["from_cache"]["clips_per_s"]),
        ("prepare (decode + write cache)", results["prepare"]["clips_per_s"] if report.written else None),
        ("CRMT-JT training step (ResNet18 w64)", train_rate),
    ]
    print(f"{'what':40s} {'clips/s':>9s} {'x training':>11s}")
    for name, rate in rows:
        if rate is not None:
            times = f"{rate / train_rate:11.2f}" if train_rate else ""
            print(f"{name:40s} {rate:9.2f} {times}")
    if "cache_layout" in results:
        layout = results["cache_layout"]
        print(
            f"one sample in this process: {layout['stepwise_ms_per_clip']:.2f} ms reading the frames it uses, "
            f"{layout['whole_ms_per_clip']:.2f} ms reading every frame (first cache layout): {layout['speedup']:.2f}x"
        )
    megabytes = results["prepare"]["cache_mb_per_clip"]
    print(f"cache: {megabytes:.2f} MB per clip; {args.workers} workers, {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
