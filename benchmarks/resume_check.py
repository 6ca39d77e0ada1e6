"""Does a resumed fit equal the uninterrupted one? The resume table of docs/running.md, "Resuming a run".

For each experiment, one uninterrupted ``python -m crmt fit`` writes a snapshot checkpoint after
every epoch (:class:`EpochSnapshots`, after the module's own epoch-end work, where Lightning's
checkpoint callbacks save); then one fit per resume point restarts from a snapshot with
``--ckpt_path``. Every run ends with the same test-split robustness report. The table lists, per
resume point, the parameters and buffers of the final checkpoint that differ from the
uninterrupted run's (compared tensor by tensor, exactly) and the report's deltas.

    python -m benchmarks.resume_check [--experiments jt crmt_jt crmt_at] [--out runs/resume_check] [--ddp]

Runs are shortened (2 + 2 CRMT epochs, 4 for baselines, 20 test clips per class) on a private
copy of the embedded dataset; every run uses the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT_DIR_VARIABLE = "CRMT_SNAPSHOT_DIR"
EPOCHS = 4
REPORT_KEYS = ("clean", "pgd", "pgd_audio", "pgd_visual")


class EpochSnapshots(Checkpoint):
    """Save ``epoch<e>.ckpt`` into ``$CRMT_SNAPSHOT_DIR`` at the end of every training epoch.

    A :class:`Checkpoint` subclass, so Lightning calls it after the module's ``on_train_epoch_end``.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        folder = Path(os.environ[SNAPSHOT_DIR_VARIABLE])
        trainer.save_checkpoint(folder / f"epoch{trainer.current_epoch}.ckpt")


def fit(experiment: str, folder: Path, data_root: Path, extra: list[str], ddp: bool) -> Path:
    """One fit of ``experiment`` writing into ``folder``; returns its final checkpoint (``folder/checkpoints``)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [
        "fit",
        "--config",
        f"experiments/{experiment}.yaml",
        f"--data.init_args.root={data_root}",
        "--data.init_args.test_per_class=20",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={folder}",
        f"--report.output_dir={folder / 'report'}",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.callbacks+=benchmarks.resume_check.EpochSnapshots",
        *(["--model.init_args.step1_epochs=2", "--model.init_args.step2_epochs=2"] if experiment.startswith("crmt") else []),
        *(["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"] if ddp else []),
        *extra,
    ]
    env = {**os.environ, SNAPSHOT_DIR_VARIABLE: str(folder / "snapshots"), "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    (folder / "snapshots").mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "crmt", *args], cwd=REPO, env=env, capture_output=True, text=True)
    (folder / "output.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"fit failed ({result.returncode}); see {folder / 'output.log'}")
    return folder / "checkpoints" / "last.ckpt"


def compare(reference: Path, resumed: Path) -> dict[str, object]:
    """Differing tensors of two final checkpoints and the deltas of their reports."""
    state = {name: torch.load(path, map_location="cpu", weights_only=False)["state_dict"] for name, path in
             (("reference", reference), ("resumed", resumed))}
    differing = [name for name, value in state["reference"].items() if not torch.equal(value, state["resumed"][name])]
    reports = [json.loads(next(path.parents[1].glob("report/metrics.json")).read_text()) for path in (reference, resumed)]
    deltas = {key: reports[1]["accuracy"][key] - reports[0]["accuracy"][key] for key in REPORT_KEYS}
    deltas["radius"] = reports[1]["certified"]["multimodal"]["mean"] - reports[0]["certified"]["multimodal"]["mean"]
    return {"differing": differing, "total": len(state["reference"]), "deltas": deltas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["jt", "crmt_jt", "crmt_at"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "resume_check")
    parser.add_argument("--ddp", action="store_true", help="two CPU processes (gloo) for every fit")
    parser.add_argument("--points", type=int, nargs="+", default=[0, 1, 2], help="resume after these epochs")
    options = parser.parse_args()
    shutil.rmtree(options.out, ignore_errors=True)
    data_root = options.out / "data"
    rows = []
    for experiment in options.experiments:
        start = time.perf_counter()
        reference = fit(experiment, options.out / experiment / "uninterrupted", data_root, [], options.ddp)
        for point in options.points:
            snapshot = options.out / experiment / "uninterrupted" / "snapshots" / f"epoch{point}.ckpt"
            resumed = fit(experiment, options.out / experiment / f"resumed{point}", data_root,
                          [f"--ckpt_path={snapshot}"], options.ddp)
            rows.append({"experiment": experiment, "after_epoch": point, **compare(reference, resumed)})
            print(f"{experiment} resumed after epoch {point}: {len(rows[-1]['differing'])} differing tensors, "
                  f"report deltas {rows[-1]['deltas']}", flush=True)
        print(f"{experiment}: {time.perf_counter() - start:.0f} s", flush=True)
    print("| experiment | resumed after epoch | differing tensors | clean | PGD | audio PGD | visual PGD | mean radius |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        deltas = row["deltas"]
        print(f"| {row['experiment']} | {row['after_epoch']} | {len(row['differing'])} / {row['total']} | "
              + " | ".join(f"{deltas[key]:+.3f}" for key in (*REPORT_KEYS, "radius")) + " |")
    (options.out / "resume_check.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
