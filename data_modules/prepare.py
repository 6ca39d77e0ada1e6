"""``python -m data_modules.prepare DATA --root FOLDER``: fill a dataset's preprocessing cache.

The data module is built from the data config ``experiments/data/<DATA>.yaml`` (its
``data.init_args``, so the cache matches what training reads), with ``--root`` and
``--set name=value`` overrides (``--set clip.frame_size=112`` for a clip setting); then
every clip of every split is decoded once into the cache in worker processes, with a progress
bar. Interrupt it at any time and run it again: cached clips are not decoded twice. Clips that
fail are listed at the end (and in ``failures.json``); the exit code is 0 even then, because
real downloads always miss some clips (training skips or rejects them as ``on_bad_clip`` says).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from data_modules.clips import MediaDataModule
from data_modules.cremad import CremadDataModule
from data_modules.kinetics_sounds import KineticsSoundsDataModule
from data_modules.ucf101 import UCF101DataModule
from data_modules.vggsound import VGGSoundDataModule

DATASETS: Final[dict[str, type[MediaDataModule]]] = {
    "ks": KineticsSoundsDataModule,
    "vggsound": VGGSoundDataModule,
    "ucf101": UCF101DataModule,
    "cremad": CremadDataModule,
}
DATA_CONFIGS: Final = Path(__file__).resolve().parents[1] / "experiments" / "data"


def data_arguments(dataset: str, config: Path | None) -> dict[str, object]:
    """The ``data.init_args`` of ``config`` (default ``experiments/data/<dataset>.yaml``), which must
    configure ``dataset``'s data module; empty when the default file does not exist."""
    path = config or DATA_CONFIGS / f"{dataset}.yaml"
    if config is None and not path.is_file():
        return {}
    data = (yaml.safe_load(path.read_text()) or {}).get("data", {})
    expected = f"data_modules.{DATASETS[dataset].__name__}"
    if data.get("class_path") not in (expected, f"{DATASETS[dataset].__module__}.{DATASETS[dataset].__name__}"):
        raise ValueError(f"{path}: data.class_path is {data.get('class_path')!r}, expected {expected} for {dataset!r}")
    return dict(data.get("init_args") or {})


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``name=value`` pairs as nested settings, values parsed as YAML (``batch_size=32``,
    ``clip.fps=null``: a dotted name sets a setting of a nested argument)."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise ValueError(f"--set expects name=value, got {pair!r}")
        *parents, leaf = name.split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def merge_settings(base: dict[str, object], overrides: dict[str, object]) -> dict[str, object]:
    """``base`` with ``overrides``, nested settings (``clip``) merged key by key."""
    merged = dict(base)
    for name, value in overrides.items():
        both_nested = isinstance(value, dict) and isinstance(merged.get(name), dict)
        merged[name] = merge_settings(merged[name], value) if both_nested else value
    return merged


def build_data_module(dataset: str, arguments: dict[str, object]) -> MediaDataModule:
    """``dataset``'s data module from ``arguments``, typed and checked as the training command line does
    (``clip`` becomes the module's settings dataclass); ``ValueError`` naming an unknown setting."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DATASETS[dataset], "data")
    try:
        config = parser.parse_object({"data": arguments})
    except ArgumentError as error:
        raise ValueError(f"{dataset} data settings: {error}") from error
    return parser.instantiate(config).data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_modules.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which dataset")
    parser.add_argument("--root", help="folder of the downloaded media (overrides the config's data.init_args.root)")
    parser.add_argument(
        "--config",
        type=Path,
        help="config YAML to read data.init_args from (default: experiments/data/<dataset>.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one data module argument, e.g. root=/data or clip.frame_size=112 (repeatable)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="decoding processes (default 2; 0 decodes in this process)"
    )
    parser.add_argument(
        "--compress", action="store_true", help="zlib-compress cache files (about half the disk, more CPU per read)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arguments = merge_settings(data_arguments(args.dataset, args.config), parse_overrides(args.overrides))
    if args.root:
        arguments["root"] = args.root
    data = build_data_module(args.dataset, arguments)
    if data.cache is None:
        raise SystemExit("cache_dir is null in the configuration; set one with --set cache_dir=<folder>")
    print(f"preparing {args.dataset} from {data.source} into {data.cache.folder}", flush=True)
    report = data.prepare_cache(workers=args.workers, compress=args.compress, progress=not args.no_progress)
    print(report.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
