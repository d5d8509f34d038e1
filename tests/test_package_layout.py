"""The package's layering is a checked contract: import-linter's contracts hold, and they catch a break."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports over the segdist package under `root`, with `root`'s pyproject.toml."""
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PATH": str(LINT.parent), "PYTHONPATH": str(root)}, timeout=120)


def test_the_import_contracts_hold():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_cycle_an_upward_import_and_torch_on_the_prepare_side_each_break_a_contract(tmp_path):
    shutil.copytree(REPO / "segdist", tmp_path / "segdist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "segdist/config/schema.py", "a") as f:  # config -> models -> config: a cycle, and upward
        f.write("\nfrom segdist.models import losses  # noqa\n")
    with open(tmp_path / "segdist/prepare/task.py", "a") as f:  # inside a function: grimp sees it too
        f.write("\n\ndef _late():\n    import torch  # noqa\n")
    with open(tmp_path / "segdist/training/budget.py", "a") as f:  # the budget must never import the loop
        f.write("\nfrom segdist.training import loop  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    out = result.stdout
    assert "segdist.config is not allowed to import segdist.models" in out
    assert "segdist.training.budget is not allowed to import segdist.training.loop" in out
    assert "segdist.prepare is not allowed to import torch" in out
    assert "No cycles are allowed in segdist" in out


def test_the_prepare_side_runs_without_torch_or_webdataset():
    """What a Ray worker imports (every module of prepare/, format/, synth/) loads neither at run time."""
    code = ("import importlib, pkgutil, sys\n"
            "for package in ('segdist.prepare', 'segdist.format', 'segdist.synth'):\n"
            "    root = importlib.import_module(package)\n"
            "    for module in pkgutil.walk_packages(root.__path__, package + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'webdataset', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "[]"
