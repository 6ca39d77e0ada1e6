"""The ``--config`` files of a run, composed in one place (``make train``, ``crmt.compare``).

A run reads, in this order (later files override earlier ones):

1. ``experiments/<experiment>.yaml``: the strategy (model, its schedule) at the embedded scale;
2. at a scale, ``experiments/scale/<scale>.yaml`` (what every strategy shares at that scale: seed,
   robustness callbacks and their budgets, encoder width, optimiser, scheduler) and
   ``experiments/scale/<scale>/<experiment>.yaml`` (that strategy's schedule);
3. ``experiments/data/<data>.yaml``: only the ``data:`` section.

``experiments/defaults.yaml`` is read before all of them by :mod:`crmt.cli`, which also reads
``experiments/data/embedded.yaml`` when none of them names a data class. A real dataset runs at
the paper's scale unless told otherwise; the embedded data and the manifest template at the
experiment's own::

    python -m crmt.experiments crmt_at --data ks    # prints the --config arguments of that run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

EXPERIMENTS_DIR: Final = Path(__file__).resolve().parents[2] / "experiments"
DEFAULTS_FILE: Final = EXPERIMENTS_DIR / "defaults.yaml"
"""Read by ``python -m crmt`` before every ``--config`` file."""
DEFAULT_DATA: Final = "embedded"
DEFAULT_DATA_FILE: Final = EXPERIMENTS_DIR / "data" / f"{DEFAULT_DATA}.yaml"
"""Read by ``python -m crmt`` after the defaults when no ``--config`` file names a data class."""
PAPER_SCALE: Final = "paper"
AUTO: Final = "auto"
"""``scale`` of :func:`config_files` that means :func:`default_scale` of the data."""


def default_scale(data: str | None) -> str | None:
    """The scale a run on data config ``data`` gets by default: none (the experiment's own) for the
    embedded data (``embedded*``), the manifest template and no data config; the paper's otherwise."""
    if data is None or data.startswith("embedded") or data == "manifest":
        return None
    return PAPER_SCALE


def _available(folder: Path) -> str:
    names = sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "defaults") if folder.is_dir() else []
    return ", ".join(names) or "none"


def _existing(path: Path, what: str, folder: Path, listing: str, advice: str = "") -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist ({listing}: {_available(folder)}){advice}")
    return path


def config_files(
    experiment: str, data: str | None = None, scale: str | None = AUTO, root: Path = EXPERIMENTS_DIR
) -> list[Path]:
    """The ``--config`` files of a run of ``experiment`` on ``data`` at ``scale`` (``AUTO``: the
    data's :func:`default_scale`; ``None``: the experiment's own), in reading order, under ``root``.
    ``FileNotFoundError`` names a missing file and lists what exists."""
    if scale == AUTO:
        scale = default_scale(data)
    files = [_existing(root / f"{experiment}.yaml", f"experiment {experiment!r}", root, "experiments")]
    if scale is not None:
        files.append(_existing(root / "scale" / f"{scale}.yaml", f"scale {scale!r}", root / "scale", "scales"))
        schedules = root / "scale" / scale
        advice = "; run it at the experiment's own scale (make: SCALE=, crmt.experiments: --scale '') or add that file"
        what = f"experiment {experiment!r} has no {scale}-scale schedule"
        files.append(_existing(schedules / f"{experiment}.yaml", what, schedules, "schedules", advice))
    if data is not None:
        files.append(data_config(data, root))
    return files


def data_config(data: str, root: Path = EXPERIMENTS_DIR) -> Path:
    """``<root>/data/<data>.yaml``; ``FileNotFoundError`` names it and lists the data configs."""
    return _existing(root / "data" / f"{data}.yaml", f"data {data!r}", root / "data", "data configs")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Print ``--config <file>`` for each file of the run (one line), or the error and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m crmt.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="experiments/<EXPERIMENT>.yaml")
    parser.add_argument("--data", default=None, help="experiments/data/<DATA>.yaml (default: the embedded data)")
    parser.add_argument(
        "--scale", default=AUTO, help="experiments/scale/<SCALE>.yaml and its schedule; '' for none "
        "(default: paper for a real dataset, none for embedded* and manifest)",
    )
    options = parser.parse_args(argv)
    try:
        files = config_files(options.experiment, options.data, options.scale or None)
    except FileNotFoundError as error:
        print(f"crmt.experiments: {error}", file=sys.stderr)
        return 2
    print(" ".join(f"--config {_shown(path)}" for path in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
