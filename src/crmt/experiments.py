"""The ``--config`` files of a run, composed in one place (``make train``, ``crmt.compare``).

A run reads, in this order (later files override earlier ones):

1. ``experiments/<experiment>.yaml``: the strategy (model, its schedule) at the embedded scale;
2. at a scale, ``experiments/scale/<scale>.yaml`` (what every strategy shares at that scale: seed,
   robustness callbacks and their budgets, encoder width, optimiser, scheduler) and
   ``experiments/scale/<scale>/<experiment>.yaml`` (that strategy's schedule);
3. with an encoder other than the paper's ResNet18, ``experiments/encoders/<encoder>.yaml`` (e.g.
   ``lipschitz``: 1-Lipschitz encoders and the report's sound certificate), for any experiment whose model
   uses the encoders;
4. ``experiments/data/<data>.yaml``: only the ``data:`` section.

``experiments/defaults.yaml`` is read before all of them by :mod:`crmt.cli`, which also reads
``experiments/data/embedded.yaml`` when none of them names a data class. A real dataset runs at
the paper's scale unless told otherwise; the embedded data and the manifest template at the
experiment's own. An experiment with no published setting has, instead of a schedule,
``experiments/scale/<scale>/<experiment>.refused``, whose text says why: composing it at that scale
raises :class:`ScheduleRefused` with that reason (docs/baselines.md §11). Composed at no scale on a
real dataset (``--scale ''``, make's ``SCALE=``), a run gets the experiment's own toy settings, and
``main`` says so on stderr::

    python -m crmt.experiments crmt_at --data ks    # prints the --config arguments of that run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

EXPERIMENTS_DIR: Final = Path(__file__).resolve().parents[2] / "experiments"
DEFAULTS_FILE: Final = EXPERIMENTS_DIR / "defaults.yaml"
"""Read by ``python -m crmt`` before every ``--config`` file."""
DEFAULT_DATA: Final = "embedded"
DEFAULT_DATA_FILE: Final = EXPERIMENTS_DIR / "data" / f"{DEFAULT_DATA}.yaml"
"""Read by ``python -m crmt`` after the defaults when no ``--config`` file names a data class."""
PAPER_SCALE: Final = "paper"
AUTO: Final = "auto"
"""``scale`` of :func:`config_files` that means :func:`default_scale` of the data."""


class ScheduleRefused(FileNotFoundError):
    """The experiment has, by design, no schedule at the scale asked for (its ``.refused`` file says why)."""


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
    experiment: str, data: str | None = None, scale: str | None = AUTO, root: Path = EXPERIMENTS_DIR,
    encoder: str | None = None,
) -> list[Path]:
    """The ``--config`` files of a run of ``experiment`` on ``data`` at ``scale`` (``AUTO``: the
    data's :func:`default_scale`; ``None``: the experiment's own) with ``encoder``'s overlay (``None``: the
    experiment's ResNet18), in reading order, under ``root``.
    ``FileNotFoundError`` names a missing file and lists what exists; :class:`ScheduleRefused` gives
    the reason of an experiment that has no schedule at that scale by design."""
    if scale == AUTO:
        scale = default_scale(data)
    files = [_existing(root / f"{experiment}.yaml", f"experiment {experiment!r}", root, "experiments")]
    if scale is not None:
        files.append(_existing(root / "scale" / f"{scale}.yaml", f"scale {scale!r}", root / "scale", "scales"))
        schedules = root / "scale" / scale
        what = f"experiment {experiment!r} has no {scale}-scale schedule"
        own = f"make train EXP={experiment}{f' DATA={data}' if data else ''} SCALE= (crmt.experiments: --scale '')"
        refusal = schedules / f"{experiment}.refused"
        if refusal.is_file():
            reason = " ".join(refusal.read_text(encoding="utf-8").split())
            raise ScheduleRefused(f"{what}: {reason} To run its own toy settings instead, say so: {own}")
        advice = f"; run it at the experiment's own scale ({own}) or add that file"
        files.append(_existing(schedules / f"{experiment}.yaml", what, schedules, "schedules", advice))
    if encoder is not None:
        encoders = root / "encoders"
        files.append(_existing(encoders / f"{encoder}.yaml", f"encoder {encoder!r}", encoders, "encoders"))
    if data is not None:
        files.append(data_config(data, root))
    return files


def _first(tree: Any, key: str) -> Any:
    """The first value of ``key`` in a parsed YAML tree, depth first (``None`` if absent)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    for item in tree if isinstance(tree, list) else []:
        if (found := _first(item, key)) is not None:
            return found
    return None


def own_scale_note(experiment: str, data: str, root: Path = EXPERIMENTS_DIR) -> str:
    """The stderr note of a run of ``experiment`` on the real dataset ``data`` at no scale: it gets the toy
    settings its own file and ``defaults.yaml`` set (read from them here), not the paper's."""
    own = yaml.safe_load((root / f"{experiment}.yaml").read_text(encoding="utf-8")) or {}
    defaults_file = root / DEFAULTS_FILE.name
    defaults = yaml.safe_load(defaults_file.read_text(encoding="utf-8")) if defaults_file.is_file() else {}
    model = (own.get("model") or {}).get("init_args") or {}
    optimizer = model.get("optimizer") or {}
    epochs = _first(own, "max_epochs") or f"{model.get('step1_epochs', 0)} + {model.get('step2_epochs', 0)}"
    settings = [
        f"encoder width {model['encoder_width']}" if "encoder_width" in model else f"embed_dim {model.get('embed_dim')}",
        f"{epochs} epochs",
        f"{str(optimizer.get('class_path')).rsplit('.', 1)[-1]} lr {_first(optimizer, 'lr')}",
        f"seed {_first(defaults, 'seed_everything')}",
        f"attack budgets {_first(defaults, 'multimodal_eps')} joint, {_first(defaults, 'unimodal_eps')} uni-modal",
    ]
    return (
        f"crmt.experiments: note: {experiment} on {data!r} at no scale gets the experiment's own toy settings "
        f"(experiments/{experiment}.yaml and defaults.yaml): {', '.join(settings)}; not the paper's "
        f"(experiments/scale/{PAPER_SCALE}.yaml: ResNet18 width 64, SGD lr 0.001, budgets 0.5 joint, 1.0 uni-modal)"
    )


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
    """Print ``--config <file>`` for each file of the run (one line), or the error and exit code 2; a real
    dataset at no scale also gets :func:`own_scale_note` on stderr."""
    parser = argparse.ArgumentParser(prog="python -m crmt.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="experiments/<EXPERIMENT>.yaml")
    parser.add_argument("--data", default=None, help="experiments/data/<DATA>.yaml (default: the embedded data)")
    parser.add_argument(
        "--scale", default=AUTO, help="experiments/scale/<SCALE>.yaml and its schedule; '' for none "
        "(default: paper for a real dataset, none for embedded* and manifest)",
    )
    parser.add_argument("--encoder", default=None,
                        help="experiments/encoders/<ENCODER>.yaml, e.g. lipschitz (default: the ResNet18 encoders)")
    options = parser.parse_args(argv)
    try:
        files = config_files(options.experiment, options.data, options.scale or None, encoder=options.encoder or None)
    except FileNotFoundError as error:
        print(f"crmt.experiments: {error}", file=sys.stderr)
        return 2
    if not options.scale and options.data is not None and default_scale(options.data) is not None:
        print(own_scale_note(options.experiment, options.data), file=sys.stderr)
    print(" ".join(f"--config {_shown(path)}" for path in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
