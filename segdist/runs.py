"""A finished run as evaluate, predict and export see it: config, dataset manifest and a checkpoint's model.

A run directory (`runs/NAME/`) is self-contained: `config.yaml` rebuilds the architecture,
`dataset.json` gives the class names, palette, ignore index and normalisation, and
`checkpoints/*/model.safetensors` holds the weights (the unwrapped model's state dict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from segdist import checkpoints
from segdist.config import Config, ConfigError, load_config
from segdist.data import DatasetInfo, Normalizer, normalization
from segdist.ema import model_weights
from segdist.models import build_from_config, use_channels_last
from segdist.sources.common import DataError

CHECKPOINT_CHOICES = "best, last or a checkpoint path"


@dataclass
class Run(DatasetInfo):
    """A run: its dataset manifest (classes, palette, ignore index: see DatasetInfo; `root` is the
    run directory), its config and the model restored from one checkpoint (eval mode, CPU)."""

    config: Config
    checkpoint: Path  # the weights file
    step: int | None  # optimizer step the checkpoint was written at, when recorded
    model: torch.nn.Module

    @property
    def dir(self) -> Path:
        return self.root

    @property
    def eval_size(self) -> int | None:
        """Long side images are resized to before inference (`data.val_size`), as in validation."""
        return self.config.data.val_size

    def model_on(self, device: torch.device) -> torch.nn.Module:
        """The model on `device`, channels-last where the run's `model.channels_last` says so for that device."""
        channels_last = use_channels_last(self.config.model.channels_last, device, self.config.train.mixed_precision)
        return self.model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def normalizer(self) -> Normalizer:
        """The normalisation the model was trained with (the run's dataset.json or ImageNet's)."""
        return Normalizer(*normalization(self.config.data, self))


def load_run(run_dir: str | Path, checkpoint: str = "best") -> Run:
    """Load `run_dir`'s config and manifest and restore the model from `checkpoint` (best, last or a path).

    With `train.ema_decay` set, the model holds the checkpoint's moving average of the weights.
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", "dataset.json"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir} is not a segdist run: {name} is missing (runs are written by `segdist train`)")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        raise DataError(f"{run_dir / 'config.yaml'}: {exc}") from None
    manifest = json.loads((run_dir / "dataset.json").read_text())
    path = checkpoints.resolve(run_dir, checkpoint)
    use_ema = config.train.ema_decay is not None and (path / checkpoints.EMA_FILE).is_file()
    weights = path / (checkpoints.EMA_FILE if use_ema else checkpoints.WEIGHTS_FILE)
    # the checkpoint replaces every weight, so no pretrained encoder (a hub download or a file) is needed
    model = build_from_config(config.model, len(manifest["classes"]), pretrained=False)
    load_weights(model, weights)
    state = json.loads((path / checkpoints.STATE_FILE).read_text()) if (path / checkpoints.STATE_FILE).is_file() else {}
    return Run(run_dir, manifest, config, weights, state.get("update"), model.eval())


def load_weights(model: torch.nn.Module, weights: Path) -> None:
    """Load a safetensors state dict strictly, tolerating torch.compile / DDP key prefixes."""
    state = load_file(str(weights))
    if weights.name == checkpoints.EMA_FILE:
        state = model_weights(state)
    state = {_strip_prefixes(k): v for k, v in state.items()}
    missing, unexpected = (sorted(keys) for keys in _key_mismatch(model, state))
    if missing or unexpected:
        raise DataError(f"{weights} does not fit the run's model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # shape mismatches, e.g. a checkpoint of another run with other classes
        raise DataError(f"{weights} does not fit the run's model: {exc}") from None


def _strip_prefixes(key: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        key = key.removeprefix(prefix)
    return key


def _key_mismatch(model: torch.nn.Module, state: dict) -> tuple[set, set]:
    expected = set(model.state_dict())
    return expected - set(state), set(state) - expected
