"""Every module of the project imports on its own, first, in a fresh interpreter state: no import cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"crmt": ROOT / "src" / "crmt", "data_modules": ROOT / "data_modules", "benchmarks": ROOT / "benchmarks"}

IMPORT_EACH_ALONE = """
import importlib, sys
import torch, lightning.pytorch  # the heavy dependencies stay loaded; the project's modules do not
failures = []
for name in sys.argv[1:]:
    for loaded in [key for key in sys.modules if key.split(".")[0] in {"crmt", "data_modules", "benchmarks"}]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failures.append(f"{name}: {type(error).__name__}: {error}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def project_modules() -> list[str]:
    """Dotted names of every Python module of the three packages (``__main__`` files excluded: they run)."""
    names = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            names.append(".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts)))
    return names


def test_every_module_imports_first_and_alone():
    modules = project_modules()
    assert {"crmt.strategies.adversarial", "crmt.robustness.evaluation", "data_modules.clips"} <= set(modules)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
