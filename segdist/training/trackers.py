"""Experiment trackers through accelerate's tracking API: TensorBoard by default, any of its trackers by name.

Scalars go through `accelerator.log`; images through each tracker's own image call where the
tracker has one (TensorBoard, W&B, MLflow, Aim, ClearML). TensorBoard writes to `runs/NAME/tb`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from segdist.config import Config
from segdist.errors import DataError
from segdist.utils.secrets import redact

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny", "aim": "aim",
            "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive"}  # tracker -> what to install


def trackers_for(cfg: Config, run_dir: Path) -> list:
    """`train.log_with` (names checked by the config) as accelerate's `log_with`, refusing missing packages.

    accelerate itself would silently drop a tracker whose package is missing.
    """
    from accelerate.tracking import TensorBoardTracker

    trackers: list = []
    for name in cfg.train.log_with:
        if importlib.util.find_spec(name) is None:
            raise DataError(f"train.log_with: {name} is not installed (pip install 'segdist[{name}]' or "
                            f"pip install {PACKAGES[name]})")
        trackers.append(TensorBoardTracker("tb", str(run_dir)) if name == "tensorboard" else name)
    return trackers


def start(accelerator, cfg: Config, run_dir: Path) -> None:  # noqa: ANN001
    """Start every tracker with the project and run names and the flattened config (main process only)."""
    name = cfg.train.name
    init_kwargs = {
        "wandb": {"name": name, "dir": str(run_dir)},
        "mlflow": {"run_name": name},
        "clearml": {"task_name": name},
        "dvclive": {"dir": str(run_dir / "dvclive")},
    }
    accelerator.init_trackers(cfg.train.project, config=flat_config(cfg), init_kwargs=init_kwargs)


def flat_config(cfg: Config) -> dict:
    """{'optim.lr': 0.001, ...} with lists and None as strings (what every tracker accepts as a parameter).

    Credentials (in `data.shards` and any other string) are masked: trackers send parameters to servers.
    """
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, bool)) else redact(value)
    return flat


def log_images(accelerator, images: dict[str, np.ndarray], step: int) -> None:  # noqa: ANN001
    """HxWx3 uint8 images, by tag, to every tracker that takes images."""
    if not accelerator.is_main_process or not images:
        return
    for tracker in accelerator.trackers:
        log = _IMAGE_LOGGERS.get(tracker.name)
        if log is not None:
            log(tracker, images, step)


def _tensorboard(tracker, images: dict, step: int) -> None:  # noqa: ANN001
    for tag, image in images.items():
        tracker.tracker.add_image(tag, image, step, dataformats="HWC")
    tracker.tracker.flush()


def _wandb(tracker, images: dict, step: int) -> None:  # noqa: ANN001
    import wandb

    tracker.tracker.log({tag: wandb.Image(image) for tag, image in images.items()}, step=step)


def _mlflow(tracker, images: dict, step: int) -> None:  # noqa: ANN001
    import mlflow

    for tag, image in images.items():
        mlflow.log_image(image, key=tag.replace("/", "_"), step=step)


def _generic(tracker, images: dict, step: int) -> None:  # noqa: ANN001
    tracker.log_images({tag: [image] for tag, image in images.items()}, step=step)


_IMAGE_LOGGERS = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow, "aim": _generic,
                  "clearml": _generic}
