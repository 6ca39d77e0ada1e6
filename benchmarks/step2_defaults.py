"""``python -m benchmarks.step2_defaults``: the measurement behind CRMT's step-2 defaults.

Where the paper is silent, crmt starts from the official code and changes a default only on
a measurement; this script is that measurement for the coupled choices of step 2 (issue 9):
the initial integration weights a0 (official 0.1; crmt shipped 1.0 before) and the step-2
optimiser and length.

For each data variant (``experiments/data/<name>.yaml``), seed and a0, CRMT-JT's step 1 is
trained once with the shipped step-1 settings (6 epochs, Adam lr 3e-3, weight decay 1e-4);
then, as at the real phase switch, tau~ is estimated over the training set and the frozen
scores of the training, validation and test splits are cached. Every step-2 candidate then
runs from the same switch on the cached scores with the module's own objective
(:func:`crmt.strategies.crmt.cached_runner_up_bound`, batches of the training loader's size) and
is read after every epoch with :func:`crmt.strategies.crmt.cached_certificate`.

The decision rule, fixed before measuring: a candidate is judged by the mean over seeds and
variants of the *validation* mean certified radius after ``best_val`` selection (the a^(m) of
the best validation epoch among those whose validation accuracy is at least the switch's),
and it must not lower the validation accuracy on average. Test numbers are printed beside
them for the record only. Results go to ``runs/bench/step2_defaults.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from crmt.strategies.crmt import CRMTJointTraining, ScoreCache, cached_certificate, cached_runner_up_bound
from crmt.strategies.phases import STEP2
from crmt.unimodal import load_data_module

CANDIDATES: dict[str, partial] = {
    "adam_lr1e-2": partial(torch.optim.Adam, lr=1e-2),
    "adam_lr1e-3": partial(torch.optim.Adam, lr=1e-3),
    "sgd_official": partial(torch.optim.SGD, lr=3e-5, momentum=0.9, weight_decay=1e-2),
}
"""Step-2 optimisers: crmt's earlier default, the issue's Adam alternative, and the official code's."""


def train_step1(data, seed: int, a0: float, epochs: int) -> CRMTJointTraining:
    """CRMT-JT after ``epochs`` of step 1 with the shipped settings (no validation pass)."""
    seed_everything(seed, workers=True)
    model = CRMTJointTraining(
        data.num_classes, data.input_shapes, encoder_width=8, rho=2.0, step1_epochs=epochs, step2_epochs=0,
        optimizer=partial(torch.optim.Adam, lr=3e-3, weight_decay=1e-4), init_integration=a0,
    )
    trainer = Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
    )
    trainer.fit(model, datamodule=data)
    return model


def switch(model: CRMTJointTraining, data) -> dict[str, ScoreCache]:
    """The phase switch: tau~ over the training split (its training transforms), score caches of every split."""
    train, tau = model._collect_scores(data.train_dataloader(), estimate_tau=True)
    model.tau.copy_(tau)
    model.phase.fill_(STEP2)
    return {
        "train": train,
        "val": model._collect_scores(data.val_dataloader(), estimate_tau=False)[0],
        "test": model._collect_scores(data.test_dataloader(), estimate_tau=False)[0],
    }


def run_step2(model, caches, optimizer_factory, epochs: int, batch_size: int, seed: int) -> list[dict[str, float]]:
    """Step 2 from the switch for ``epochs`` epochs; per epoch (0 = the switch) validation and test (acc, radius)."""
    integration = torch.nn.Parameter(model.head.integration.detach().clone())
    bias, tau, train = model.head.bias.detach(), model.tau, caches["train"]
    optimizer = optimizer_factory([integration])
    rows = train.present.nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(seed)

    def read() -> dict[str, float]:
        values = {}
        for split in ("val", "test"):
            values[f"{split}_acc"], values[f"{split}_radius"] = cached_certificate(caches[split], integration.detach(), bias, tau)
        values["a_min"], values["a_max"] = integration.min().item(), integration.max().item()
        return values

    trajectory = [read()]
    for _ in range(epochs):
        order = rows[torch.randperm(rows.numel(), generator=generator)]
        for start in range(0, order.numel(), batch_size):
            index = order[start:start + batch_size]
            bound = cached_runner_up_bound(train, index, integration, bias, tau)
            optimizer.zero_grad()
            (-bound.mean()).backward()
            optimizer.step()
        trajectory.append(read())
    return trajectory


def select(trajectory: list[dict[str, float]], epochs: int) -> dict[str, float]:
    """The ``best_val`` choice among epochs 0..epochs (the module's rule) and the plain last epoch."""
    floor = trajectory[0]["val_acc"]
    best = max(
        (point for point in trajectory[: epochs + 1] if point["val_acc"] >= floor),
        key=lambda point: point["val_radius"],
    )
    return {**{f"best_{k}": v for k, v in best.items()}, **{f"last_{k}": v for k, v in trajectory[epochs].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["embedded", "embedded_misleading"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--a0", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--step1-epochs", type=int, default=6)
    parser.add_argument("--max-step2-epochs", type=int, default=30)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 5, 10, 30])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/step2_defaults.json"))
    parser.add_argument("--summarise", type=Path, nargs="+", default=None, metavar="JSON",
                        help="train nothing: print the tables of earlier results (runs of different variants merged)")
    options = parser.parse_args()
    if options.summarise:
        summarise([r for path in options.summarise for r in json.loads(path.read_text(encoding="utf-8"))], options.lengths)
        return
    results: list[dict] = []
    start = time.perf_counter()
    for variant in options.variants:
        for seed in range(options.seeds):
            data = load_data_module(variant, seed=seed)
            data.prepare_data()
            data.setup("fit")
            data.setup("test")
            for a0 in options.a0:
                model = train_step1(data, seed, a0, options.step1_epochs)
                caches = switch(model, data)
                for name, factory in CANDIDATES.items():
                    trajectory = run_step2(model, caches, factory, options.max_step2_epochs, data.batch_size, seed)
                    results.append({"variant": variant, "seed": seed, "a0": a0, "optimizer": name, "trajectory": trajectory})
                print(f"[step2] {variant} seed {seed} a0 {a0}: done at {time.perf_counter() - start:.0f} s", flush=True)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results) + "\n", encoding="utf-8")
    summarise(results, options.lengths)


def summarise(results: list[dict], lengths: list[int]) -> None:
    """One line per (a0, optimiser, length): means over seeds and variants, validation first."""
    print("| a0 | step-2 optimiser | epochs | val acc (switch -> best) | val radius (switch -> best) | "
          "test acc best | test radius best | test acc last | test radius last | a range last |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["a0"], r["optimizer"]) for r in results})
    for a0, name in keys:
        runs = [r for r in results if r["a0"] == a0 and r["optimizer"] == name]
        for length in lengths:
            chosen = [select(r["trajectory"], length) for r in runs]
            switch0 = [r["trajectory"][0] for r in runs]

            def mean(values):
                return statistics.mean(values)

            print(
                f"| {a0} | {name} | {length} | {mean(s['val_acc'] for s in switch0):.3f} -> {mean(c['best_val_acc'] for c in chosen):.3f} "
                f"| {mean(s['val_radius'] for s in switch0):.3f} -> {mean(c['best_val_radius'] for c in chosen):.3f} "
                f"| {mean(c['best_test_acc'] for c in chosen):.3f} | {mean(c['best_test_radius'] for c in chosen):.3f} "
                f"| {mean(c['last_test_acc'] for c in chosen):.3f} | {mean(c['last_test_radius'] for c in chosen):.3f} "
                f"| {min(c['last_a_min'] for c in chosen):.3f}..{max(c['last_a_max'] for c in chosen):.3f} |"
            )
    for variant in sorted({r["variant"] for r in results}):
        print(f"\nper variant ({variant}), best_val at the longest length:")
        for a0, name in keys:
            runs = [r for r in results if r["a0"] == a0 and r["optimizer"] == name and r["variant"] == variant]
            chosen = [select(r["trajectory"], lengths[-1]) for r in runs]
            print(f"  a0 {a0} {name}: val radius {statistics.mean(c['best_val_radius'] for c in chosen):.3f}, "
                  f"test acc {statistics.mean(c['best_test_acc'] for c in chosen):.3f}, "
                  f"test radius {statistics.mean(c['best_test_radius'] for c in chosen):.3f}")


if __name__ == "__main__":
    main()
