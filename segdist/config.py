"""Typed training config: flat YAML sections, dotted command-line overrides, choices checked at start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("poly", "cosine", "step", "plateau", "constant")
PRECISIONS = ("no", "fp16", "bf16")
NORMALIZE = ("dataset", "imagenet")
CLASS_WEIGHTS = ("inverse", "median_freq")


@dataclass
class DataConfig:
    shards: str = "shards/demo"  # a directory written by `segdist prepare`
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # H, W
    base_size: int | None = None  # resize the long side to this before scaling (None: keep)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 0.0  # max degrees
    color_jitter: float = 0.0  # probability
    rgb_shift: float = 0.0  # probability
    blur: float = 0.0  # probability
    normalize: str = "dataset"  # "dataset" (dataset.json mean/std) or "imagenet"
    val_size: int | None = None  # resize the long side for validation; scored at full label size
    batch_size: int = 8  # per process
    val_batch_size: int = 4
    workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 256
    class_balanced: bool = False  # repeat images holding rare classes (repeat-factor sampling)
    balance_threshold: float = 0.3  # repeat images whose rarest class is in fewer than this share
    epoch_samples: int | None = None  # training samples per epoch over all processes (default: split size)


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = None  # None, "imagenet" (needs a hub) or a local checkpoint file
    output_stride: int = 16  # DeepLabV3/V3+: 8 or 16, PAN: 16 or 32; other architectures ignore it
    decoder_dropout: float = 0.0
    encoder_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model, e.g. {drop_path_rate: 0.1}
    arch_kwargs: dict = field(default_factory=dict)  # passed to the smp architecture, e.g. {decoder_channels: [...]}
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False


@dataclass
class LossConfig:
    name: str = "ce"
    class_weights: str | list[float] | None = None  # "inverse", "median_freq" or a list
    focal_gamma: float = 2.0
    focal_alpha: list[float] | None = None
    dice_weight: float = 0.5


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD
    scheduler: str = "poly"
    warmup_steps: int = 0
    poly_power: float = 0.9
    step_size: int = 1000  # "step": multiply lr by gamma every step_size steps
    gamma: float = 0.1
    plateau_patience: int = 2  # "plateau": validations without mIoU gain before lowering lr
    plateau_factor: float = 0.5
    grad_clip: float | None = None
    accumulate: int = 1


@dataclass
class TrainConfig:
    name: str = "run"
    runs_dir: str = "runs"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    mixed_precision: str = "no"
    seed: int = 0
    val_every: int = 1  # epochs
    checkpoint_every: int = 0  # optimizer steps; 0 = at the end of each epoch only
    keep_last: int = 3
    early_stop_patience: int | None = None  # validations without mIoU gain
    log_every: int = 10  # steps
    log_images: int = 4  # validation overlays written to TensorBoard


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config that cannot run; the message lists the valid choices."""


def _section_types(section: Any) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(section)}


def apply(cfg: Config, values: dict, where: str = "config") -> None:
    """Set nested values onto `cfg`, refusing unknown sections and keys."""
    sections = _section_types(cfg)
    for name, body in values.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section '{name}'; valid: {', '.join(sections)}")
        section = getattr(cfg, name)
        keys = _section_types(section)
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping")
        for key, value in body.items():
            if key not in keys:
                raise ConfigError(f"{where}: unknown key '{name}.{key}'; valid: {', '.join(keys)}")
            setattr(section, key, value)


def parse_override(text: str) -> dict:
    """'optim.lr=0.01' -> {'optim': {'lr': 0.01}} (the value parsed as YAML)."""
    dotted, sep, raw = text.partition("=")
    parts = dotted.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return {parts[0]: {parts[1]: yaml.safe_load(raw)}}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then the dotted overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        apply(cfg, values, str(path))
    for item in overrides:
        apply(cfg, parse_override(item), f"override '{item}'")
    validate(cfg)
    return cfg


def _choice(value: Any, choices: tuple, what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{what} '{value}' is not valid; choose one of {', '.join(map(str, choices))}")


def validate(cfg: Config) -> None:
    """Check every choice so that a bad config fails before any work starts."""
    from segdist.losses import LOSSES
    from segdist.models import ARCHS, ModelOptionError, check_model

    _choice(cfg.model.arch, ARCHS, "model.arch")
    _choice(cfg.loss.name, LOSSES, "loss.name")
    _choice(cfg.optim.name, OPTIMIZERS, "optim.name")
    _choice(cfg.optim.scheduler, SCHEDULERS, "optim.scheduler")
    _choice(cfg.train.mixed_precision, PRECISIONS, "train.mixed_precision")
    _choice(cfg.data.normalize, NORMALIZE, "data.normalize")
    if isinstance(cfg.loss.class_weights, str):
        _choice(cfg.loss.class_weights, CLASS_WEIGHTS, "loss.class_weights")
    if len(cfg.data.crop_size) != 2 or any(int(s) % 32 for s in cfg.data.crop_size):
        raise ConfigError(f"data.crop_size {cfg.data.crop_size} must be [H, W], both multiples of 32")
    for key in ("batch_size", "val_batch_size"):
        if int(getattr(cfg.data, key)) < 1:
            raise ConfigError(f"data.{key} must be at least 1")
    if cfg.optim.accumulate < 1:
        raise ConfigError("optim.accumulate must be at least 1")
    m = cfg.model
    try:  # a dry run at the training batch shape, on PyTorch's meta device (no memory, no weights)
        check_model(m.arch, m.encoder, output_stride=m.output_stride, encoder_kwargs=m.encoder_kwargs,
                    arch_kwargs=m.arch_kwargs, input_shape=(int(cfg.data.batch_size), 3, *map(int, cfg.data.crop_size)))
    except ModelOptionError as exc:
        raise ConfigError(f"model.{exc.option}: {exc}") from None


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
