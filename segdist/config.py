"""Typed training config: flat YAML sections, dotted command-line overrides, choices checked at start."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segdist.coerce import TypeMismatch, coerce, describe

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("poly", "cosine", "step", "plateau", "constant")
PRECISIONS = ("no", "fp16", "bf16")
NORMALIZE = ("dataset", "imagenet")
NONFINITE = ("stop", "skip")
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive")  # accelerate's trackers
CLASS_WEIGHTS = ("inverse", "median_freq", "sqrt_median_freq")


@dataclass
class DataConfig:
    shards: str = "shards/demo"  # written by `segdist prepare`: a directory, http(s):// or s3:// prefix, or pipe:
    train_split: str | list[str] = "train"  # one split, or several trained on together: [train, val]
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
    cache_dir: str | None = None  # node-local cache for remote shards (each downloaded once per node)
    cache_max_gb: float = 50.0  # the cache's size bound; least recently used shards are evicted
    retries: int = 5  # transient failures tolerated per remote shard read (resumed where possible)
    io_timeout: float = 30.0  # seconds any network call may take


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = None  # None, "imagenet" (needs a hub) or a local checkpoint file
    output_stride: int = 16  # DeepLabV3/V3+: 8 or 16, PAN: 16 or 32; other architectures ignore it
    decoder_dropout: float = 0.0
    encoder_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model, e.g. {drop_path_rate: 0.1}
    arch_kwargs: dict = field(default_factory=dict)  # passed to the smp architecture, e.g. {decoder_channels: [...]}
    channels_last: bool | None = None  # null: on for CPU and for CUDA with bf16/fp16, off for CUDA fp32
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm across processes: CUDA only (refused for CPU processes)


@dataclass
class LossConfig:
    name: str = "ce"
    class_weights: str | list[float] | None = None  # "inverse", "median_freq", "sqrt_median_freq" or a list
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
    log_images: int = 4  # validation overlays written to the trackers
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers
    project: str = "segdist"  # tracker project (W&B project, MLflow experiment)
    collective_timeout: float = 300.0  # seconds a rank waits in a collective for a silent peer
    nonfinite: str = "stop"  # NaN/inf loss: "stop" the run, or "skip" the update
    max_nonfinite: int = 10  # "skip": give up after this many non-finite updates in a row
    ema_decay: float | None = None  # exponential moving average of the weights (e.g. 0.999); None: off
    budget: str | None = None  # wall-clock budget, e.g. 50m or 2h: sets max_steps to fit it


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 scalars: only true/false are booleans (`no`, `on`, `off` stay strings, as in
    `mixed_precision: no`), and `1e-4` is a float, not the string '1e-4'."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"), list("-+0123456789."))


def read_yaml(text: str):  # noqa: ANN201
    """Parse a config file or an override value (YAML 1.2 scalars, see _Yaml12Loader)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A config that cannot run; the message lists the valid choices."""


def _field_types(section: Any) -> dict[str, Any]:
    """Field name -> resolved type hint (the annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def apply(cfg: Config, values: dict, where: str = "config") -> None:
    """Set nested values onto `cfg`, refusing unknown sections and keys and values of the wrong type."""
    sections = _field_types(cfg)
    for name, body in values.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section '{name}'; valid: {', '.join(sections)}")
        section = getattr(cfg, name)
        keys = _field_types(section)
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping")
        for key, value in body.items():
            if key not in keys:
                raise ConfigError(f"{where}: unknown key '{name}.{key}'; valid: {', '.join(keys)}")
            try:
                setattr(section, key, coerce(value, keys[key]))
            except TypeMismatch:
                raise ConfigError(f"{where}: {name}.{key} = {value!r} is not a valid {describe(keys[key])}") from None


def parse_override(text: str) -> dict:
    """'optim.lr=0.01' -> {'optim': {'lr': 0.01}} (the value parsed as YAML)."""
    dotted, sep, raw = text.partition("=")
    parts = dotted.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return {parts[0]: {parts[1]: read_yaml(raw)}}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then the dotted overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file does not exist")
        values = read_yaml(path.read_text()) or {}
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
    _choice(cfg.train.nonfinite, NONFINITE, "train.nonfinite")
    for tracker in cfg.train.log_with:
        _choice(tracker, TRACKERS, "train.log_with")
    if cfg.train.ema_decay is not None and not 0.0 < cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay {cfg.train.ema_decay} must be between 0 and 1 (e.g. 0.999)")
    if cfg.train.budget is not None:
        from segdist.budget import parse_duration

        try:
            parse_duration(cfg.train.budget)
        except ValueError as exc:
            raise ConfigError(f"train.budget: {exc}") from None
    if not cfg.data.train_split:
        raise ConfigError("data.train_split names no split")
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
