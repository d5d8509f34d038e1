"""`segdist env`: what a bug report needs: the versions of the stack, the devices, the process layout.

Versions come from the installed packages' metadata (``importlib.metadata``), not from importing
them: ray, timm, smp, albumentations and torchmetrics each take seconds to import and are not
needed to name their version. Only torch is imported, to ask it about CUDA and the devices.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from segdist import version

# (label, distribution names to try: the first one installed is reported)
PACKAGES = (
    ("torch", ("torch",)),
    ("torchvision", ("torchvision",)),
    ("accelerate", ("accelerate",)),
    ("webdataset", ("webdataset",)),
    ("ray", ("ray",)),
    ("timm", ("timm",)),
    ("segmentation-models-pytorch", ("segmentation-models-pytorch", "segmentation_models_pytorch")),
    ("albumentations", ("albumentations",)),
    ("torchmetrics", ("torchmetrics",)),
    ("numpy", ("numpy",)),
    ("opencv", ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")),
    ("onnx", ("onnx",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
)
# Set by torchrun / `accelerate launch` (and by SLURM for the job) in every process they start.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_NTASKS", "SLURM_PROCID")


def package_version(distributions: tuple[str, ...]) -> str:
    """The installed version of the first of `distributions` found, or "not installed"."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def report() -> str:
    """The whole report, as `segdist env` prints it."""
    import torch

    versions = {label: package_version(names) for label, names in PACKAGES}
    versions["torch"] = torch.__version__  # with the build tag (+cu130, +cpu) that the metadata lacks
    sections = [
        _header(),
        "packages\n" + "\n".join(f"  {label:<28} {version}" for label, version in versions.items()),
        "devices\n" + "\n".join(f"  {line}" for line in device_lines()),
        "processes\n" + "\n".join(f"  {line}" for line in process_lines()),
    ]
    return "\n\n".join(sections)


def rank_line() -> str:
    """One line for a process other than rank 0 under a launcher (rank 0 prints the whole report)."""
    found = " ".join(f"{name}={os.environ[name]}" for name in LAUNCHER_VARIABLES[:4] if name in os.environ)
    return f"segdist env: process {found} on {platform.node()} (rank 0 prints the report)"


def _header() -> str:
    source = Path(version.__file__).resolve().parent
    commit = _git_commit(source)
    return "\n".join([
        f"segdist {version.__version__} ({source}{', git ' + commit if commit else ''})",
        f"python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        f"platform {platform.platform()}",
    ])


def _git_commit(folder: Path) -> str | None:
    """Short commit (and "+changes" when the tree differs) of a source checkout; None for an installed wheel."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        return commit + (" +changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_lines() -> list[str]:
    """CPU cores, then CUDA as torch sees it: build, driver availability and each device."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"CPU: {usable} cores usable (of {os.cpu_count()}), torch threads {torch.get_num_threads()}"]
    built = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "torch built without CUDA"
    if not torch.cuda.is_available():
        return [*lines, f"CUDA: not available ({built})"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    cudnn = torch.backends.cudnn.version()
    lines.append(f"CUDA: available ({built}, cuDNN {cudnn}), {torch.cuda.device_count()} devices"
                 + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""))
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        lines.append(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                     f"compute capability {props.major}.{props.minor}")
    return lines


def process_lines() -> list[str]:
    """What the launcher set up in this process, and the process count asked of `accelerate launch`."""
    found = {name: os.environ[name] for name in LAUNCHER_VARIABLES if name in os.environ}
    if found:
        lines = ["launcher: " + " ".join(f"{name}={value}" for name, value in found.items())]
    else:
        lines = ["launcher: none (WORLD_SIZE, RANK, LOCAL_WORLD_SIZE unset: one process)"]
    asked = _requested_world_size()
    lines.append(f"processes asked of `accelerate launch`: {asked if asked is not None else 'not launched by it'}")
    if asked is not None and "WORLD_SIZE" in found and int(found["WORLD_SIZE"]) != asked:
        lines.append(f"WARNING: {asked} processes asked for, the launcher started {found['WORLD_SIZE']} "
                     "(`accelerate launch --cpu` starts one; see the README)")
    slurm = {name: os.environ[name] for name in SLURM_VARIABLES if name in os.environ}
    if slurm:
        lines.append("SLURM: " + " ".join(f"{name}={value}" for name, value in slurm.items()))
    return lines


def _requested_world_size() -> int | None:
    from segdist.distributed import requested_world_size  # here: it imports torch

    return requested_world_size()
