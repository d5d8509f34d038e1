"""`segdist --version` and `segdist env`: what a bug report needs, without importing the slow half of the stack."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from helpers import run_cli

import segdist
from segdist import env

REPO = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("--version")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"segdist {segdist.__version__}"
    assert metadata.version("segdist") == segdist.__version__  # pyproject reads it from segdist/version.py


def test_env_names_every_version_of_the_stack(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env.LAUNCHER_VARIABLES + env.SLURM_VARIABLES + ("SEGDIST_WORLD_SIZE",):
        monkeypatch.delenv(name, raising=False)
    run_cli("env")
    out = capsys.readouterr().out
    import torch

    expected = {"torch": torch.__version__, "ray": metadata.version("ray"), "timm": metadata.version("timm"),
                "segmentation-models-pytorch": metadata.version("segmentation-models-pytorch"),
                "accelerate": metadata.version("accelerate"), "webdataset": metadata.version("webdataset"),
                "albumentations": metadata.version("albumentations"), "torchmetrics": metadata.version("torchmetrics"),
                "numpy": metadata.version("numpy"), "opencv": metadata.version("opencv-python-headless")}
    lines = out.splitlines()
    for label, version in expected.items():
        assert any(line.split() == [label, version] for line in lines), (label, version, out)
    assert f"segdist {segdist.__version__}" in out and f"python {sys.version.split()[0]}" in out
    cuda = "CUDA: available" if torch.cuda.is_available() else "CUDA: not available"
    assert cuda in out and f"cores usable (of {os.cpu_count()})" in out
    assert "launcher: none" in out and "not launched by it" in out


def test_env_shows_the_launchers_process_layout(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0", "SEGDIST_WORLD_SIZE": "2",
              "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2"}
    for name, value in layout.items():
        monkeypatch.setenv(name, value)
    run_cli("env")
    out = capsys.readouterr().out
    assert "launcher: WORLD_SIZE=1 RANK=0 LOCAL_WORLD_SIZE=1 LOCAL_RANK=0" in out
    assert "processes asked of `accelerate launch`: 2" in out
    assert "WARNING: 2 processes asked for, the launcher started 1" in out
    assert "SLURM: SLURM_JOB_ID=77 SLURM_JOB_NUM_NODES=2" in out

    monkeypatch.setenv("RANK", "1")  # the other ranks print one line each
    run_cli("env")
    assert capsys.readouterr().out.startswith("segdist env: process WORLD_SIZE=1 RANK=1")


def test_env_imports_neither_ray_nor_the_model_stack() -> None:
    """Their versions come from package metadata: importing them would cost seconds each."""
    slow = ("ray", "timm", "segmentation_models_pytorch", "torchmetrics")
    code = f"import sys; from segdist import env; env.report(); print([m for m in {slow} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "[]"
