"""``python -m crmt.compare [EXPERIMENT ...] [--seeds N | --seed-list S ...] [--data NAME] [--suite NAME] [--encoder NAME]``
(``make compare``): train several strategies on the same data over the same seeds (with ``--encoder lipschitz``,
their 1-Lipschitz-encoder versions, judged on sound certified accuracy too), then put their
robustness reports side by side with mean ± std over seeds and the paper's orderings judged by a
paired two-level bootstrap (see :mod:`crmt.statistics`), on the adaptive evaluation's worst case
(the full ``standard`` suite unless ``--suite`` names another, :data:`crmt.robustness.suite.SUITES`)
with the paper's attack protocol beside it.

Each (experiment, seed) runs as its own process (so W&B runs and global state never mix)::

    python -m crmt fit --config experiments/<name>.yaml [--config experiments/scale/... (a real dataset)]
        [--config experiments/encoders/<ENCODER>.yaml] --config experiments/data/<DATA or embedded>.yaml
        --seed_everything <s> --report.output_dir <out>/<name>/seed<s>
        --report.settings.adaptive.suite <suite> <ARGS>

Its folder holds ``train.log``, the report (``metrics.json``, ``per_sample.json``, ...) and
``run.json``: the command's arguments (without the Python executable), the SHA-256 of every config
file involved (``experiments/defaults.yaml``, the experiment's, the data's) and of the code (every
``.py`` file of ``src/crmt`` and ``data_modules``, where the defaults of every class and the
embedded data's design live), and the wall time. A finished run is reused only when its
``run.json`` records the same arguments and hashes;
otherwise (or with ``--force``) it is run again, and the reason is printed. The results,
``<out>/compare.md``, ``<out>/compare.json`` and ``<out>/ablation.png`` (the paper's Figure 5), are
written by :mod:`crmt.compare_report`. ``<out>`` defaults to ``runs/compare/<DATA or embedded>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crmt import experiments
from crmt.compare_report import SeedRun, load_run, write_comparison
from crmt.robustness.suite import SUITES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
DEFAULTS_FILE = EXPERIMENTS_DIR / "defaults.yaml"
"""Read by ``python -m crmt`` before every experiment file (see :mod:`crmt.cli`)."""
ALL_EXPERIMENTS = (
    "jt", "ojt", "gb", "ogm", "pmr", "msefm", "mmat", "mixup",
    "crmt_jt", "crmt_at", "crmt_mix", "crmt_step1", "crmt_step2", "mmt", "crmt_mmt",
)
"""Every strategy of the paper on the embedded dataset, the default of ``make compare``."""
DEFAULT_SEEDS = 5
"""Seeds per experiment by default: with 5, the headline orderings (CRMT-JT and CRMT-AT above JT under the joint
PGD and adaptive attacks) are detected with power 0.9 or more on the embedded data (``python -m crmt.power``)."""
REPORT_FILES = ("metrics.json", "per_sample.json")
"""What a finished run's report folder must hold."""


def config_files(name: str, data: str | None, encoder: str | None = None) -> list[Path]:
    """The ``--config`` files of a run of ``name`` on ``data`` (the embedded data when ``None``, named
    explicitly so that its hash is recorded), as ``make train`` composes them (:mod:`crmt.experiments`)."""
    return experiments.config_files(name, data or experiments.DEFAULT_DATA, root=EXPERIMENTS_DIR, encoder=encoder)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


CODE_KEY = "code: src/crmt/**/*.py, data_modules/**/*.py"
"""The key of the code's hash among a run's recorded hashes."""
NOT_RUN_CODE = frozenset({"compare.py", "compare_report.py", "power.py", "statistics.py", "unimodal.py"})
"""Modules of ``src/crmt`` that a training run never imports (they read finished runs), left out of the hash."""


def code_sha256(root: Path) -> str:
    """One SHA-256 over every ``.py`` file of ``root/src/crmt`` and ``root/data_modules`` (relative path
    and bytes, sorted), except the comparison's own modules (:data:`NOT_RUN_CODE`)."""
    digest = hashlib.sha256()
    for folder in (root / "src" / "crmt", root / "data_modules"):
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            if path.parent == root / "src" / "crmt" and path.name in NOT_RUN_CODE:
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (the command's form), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class RunPlan:
    """One (experiment, seed) run: where it goes, its command's arguments after the Python
    executable, and the SHA-256 of its config files (keyed by path relative to the project)."""

    name: str
    seed: int
    data: str | None
    folder: Path
    arguments: tuple[str, ...]
    config_sha256: dict[str, str]

    def record(self, wall_seconds: float) -> dict:
        """The content of ``run.json`` after a successful run."""
        return {
            "experiment": self.name,
            "seed": self.seed,
            "data": self.data,
            "arguments": list(self.arguments),
            "config_sha256": dict(self.config_sha256),
            "wall_seconds": wall_seconds,
        }


SUITE_OVERRIDE = "--report.settings.adaptive.suite"
"""The override of the report's adaptive suite (the last callback of every config's list is the ``RobustnessReport``)."""


def plan_run(
    name: str, seed: int, out: Path, data: str | None = None, extra_args: Sequence[str] = (), suite: str = "standard",
    encoder: str | None = None,
) -> RunPlan:
    """The run of experiment ``name`` with ``seed`` (Lightning's seed and the data module's) into
    ``out/<name>/seed<seed>``, its report's adaptive evaluation at ``suite``, with ``encoder``'s overlay
    (``experiments/encoders/<encoder>.yaml``; ``None``: the ResNet18 encoders)."""
    if suite not in SUITES:
        raise ValueError(f"unknown adaptive suite {suite!r}; the named suites are {sorted(SUITES)}")
    files = config_files(name, data, encoder=encoder)
    folder = Path(out) / name / f"seed{seed}"
    arguments = ["-m", "crmt", "fit", *(argument for f in files for argument in ("--config", _shown(f)))]
    arguments += ["--seed_everything", str(seed), "--report.output_dir", str(folder),
                  SUITE_OVERRIDE, suite, *extra_args]
    read = [DEFAULTS_FILE, *files] if DEFAULTS_FILE.is_file() else files
    hashes = {str(Path(f).resolve().relative_to(PROJECT_ROOT)): sha256_file(f) for f in read}
    hashes[CODE_KEY] = code_sha256(PROJECT_ROOT)
    return RunPlan(name, seed, data, folder, tuple(arguments), hashes)


def rerun_reason(plan: RunPlan, force: bool = False) -> str | None:
    """Why ``plan`` must run (None: its folder holds a finished run with the same arguments and config hashes)."""
    if force:
        return "--force"
    record_path = plan.folder / "run.json"
    if not record_path.is_file():
        return "no run.json (never run, unfinished, or run by an older crmt.compare)"
    missing = [name for name in REPORT_FILES if not (plan.folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return f"run.json unreadable ({error})"
    if record.get("arguments") != list(plan.arguments):
        return f"arguments changed: {shlex.join(record.get('arguments') or [])!r} -> {shlex.join(plan.arguments)!r}"
    old = record.get("config_sha256") or {}
    if old != plan.config_sha256:
        changed = sorted(key for key in old.keys() | plan.config_sha256.keys() if old.get(key) != plan.config_sha256.get(key))
        return f"config files changed: {', '.join(changed)}"
    return None


def launch(command: Sequence[str], log: Path) -> int:
    """Run ``command`` with its output in ``log``; return its exit code."""
    with Path(log).open("w", encoding="utf-8") as stream:
        return subprocess.run(list(command), stdout=stream, stderr=subprocess.STDOUT, check=False).returncode


def execute(plan: RunPlan, force: bool = False) -> SeedRun:
    """Reuse ``plan``'s finished run, or run it (printing why) and record ``run.json``."""
    label = f"{plan.name} seed {plan.seed}"
    reason = rerun_reason(plan, force)
    if reason is None:
        print(f"[compare] {label}: reusing {plan.folder} (same arguments and config files)", flush=True)
        return load_run(plan.name, plan.seed, plan.folder)
    plan.folder.mkdir(parents=True, exist_ok=True)
    for name in ("run.json", *REPORT_FILES):
        (plan.folder / name).unlink(missing_ok=True)
    log = plan.folder / "train.log"
    command = [sys.executable, *plan.arguments]
    print(f"[compare] {label}: running because {reason}", flush=True)
    print(f"[compare] {label}: {shlex.join(command)} (log: {log})", flush=True)
    start = time.perf_counter()
    code = launch(command, log)
    seconds = time.perf_counter() - start
    missing = [name for name in REPORT_FILES if not (plan.folder / name).is_file()]
    if code != 0 or missing:
        detail = f"exit code {code}" + (f", no {' or '.join(missing)} written" if missing else "")
        raise RuntimeError(f"experiment {plan.name!r} seed {plan.seed} failed ({detail}); see {log}")
    (plan.folder / "run.json").write_text(json.dumps(plan.record(seconds), indent=2) + "\n", encoding="utf-8")
    print(f"[compare] {label}: done in {seconds:.0f} s", flush=True)
    return load_run(plan.name, plan.seed, plan.folder)


def run_all(
    names: Sequence[str], seeds: Sequence[int], out: Path, data: str | None = None,
    extra_args: Sequence[str] = (), force: bool = False, suite: str = "standard", encoder: str | None = None,
) -> dict[str, list[SeedRun]]:
    """Every (experiment, seed) run, seed by seed (a data module generating data per seed does so once
    per seed), as ``{name: [run of each seed]}``. Every config is checked before anything runs."""
    plans = {(name, seed): plan_run(name, seed, out, data, extra_args, suite, encoder) for seed in seeds for name in names}
    runs: dict[str, list[SeedRun]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:
            runs[name].append(execute(plans[name, seed], force))
    return runs


def seed_list(count: int | None, explicit: Sequence[int] | None) -> list[int]:
    """The seeds to run: ``explicit`` if given, else 0..count-1; distinct and non-negative."""
    seeds = list(explicit) if explicit else list(range(count if count is not None else DEFAULT_SEEDS))
    if not seeds:
        raise ValueError("need at least one seed")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct and non-negative, got {seeds}")
    return seeds


def runnable(names: Sequence[str], data: str | None) -> list[str]:
    """``names`` without those that refuse to run on ``data`` (no schedule at its scale, by design), each named
    with its reason; an experiment asked for by name is not skipped (its refusal is then the error)."""
    kept = []
    for name in names:
        try:
            config_files(name, data)
        except experiments.ScheduleRefused as refusal:
            print(f"[compare] skipped {name}: {refusal}")
            continue
        kept.append(name)
    return kept


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=None,
                        help="experiment names (default: all; on a real dataset all that have a paper-scale schedule)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, metavar="N",
                       help=f"run seeds 0..N-1 (default {DEFAULT_SEEDS}: docs/robustness.md, \"Comparing strategies over seeds\")")
    seeds.add_argument("--seed-list", type=int, nargs="+", default=None, metavar="S", help="run these seeds")
    parser.add_argument("--data", default=None, help="also read experiments/data/<DATA>.yaml in every run")
    parser.add_argument("--encoder", default=None,
                        help="read experiments/encoders/<ENCODER>.yaml in every run, e.g. lipschitz (default: ResNet18)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/compare/<DATA or embedded>[_<ENCODER>])")
    parser.add_argument("--args", default="", help="LightningCLI overrides passed to every run, e.g. '--trainer.max_epochs 2'")
    parser.add_argument("--force", action="store_true", help="rerun every run even when a matching finished one exists")
    parser.add_argument("--replicates", type=int, default=10_000, help="bootstrap replicates per ordering (default 10000)")
    parser.add_argument("--suite", default="standard", choices=sorted(SUITES),
                        help="the adaptive suite of every run's report (default: standard, the full suite)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run (or reuse) every (experiment, seed), write the comparison, print it; return ``compare.md``'s path."""
    options = _parser().parse_args(argv)
    seeds = seed_list(options.seeds, options.seed_list)
    names = list(dict.fromkeys(options.experiments or runnable(ALL_EXPERIMENTS, options.data)))
    out = options.out or Path("runs/compare") / "_".join(filter(None, (options.data or "embedded", options.encoder)))
    start = time.perf_counter()
    runs = run_all(names, seeds, out, options.data, shlex.split(options.args), options.force, options.suite,
                   options.encoder)
    markdown, results = write_comparison(runs, out, options.data, options.replicates, elapsed=time.perf_counter() - start)
    print(markdown.read_text(encoding="utf-8"))
    print(f"[compare] {len(names)} experiments x {len(seeds)} seeds in {time.perf_counter() - start:.0f} s; "
          f"written {markdown} and {results}")
    return markdown


if __name__ == "__main__":
    main()
