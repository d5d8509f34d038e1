"""Loading a config: YAML 1.2 files, dotted command-line overrides, every value type- and choice-checked."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from segdist.config.coerce import TypeMismatch, coerce, describe
from segdist.config.schema import (
    CLASS_WEIGHTS,
    NONFINITE,
    NORMALIZE,
    OPTIMIZERS,
    PRECISIONS,
    RESIZE_SIDES,
    SCHEDULERS,
    TRACKERS,
    Config,
    DataConfig,
    parse_duration,
)
from segdist.errors import ConfigError
from segdist.utils.files import write_text_atomic
from segdist.utils.secrets import redact


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


def _field_types(section: Any) -> dict[str, Any]:
    """Field name -> resolved type hint (the annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


# keys renamed for what they are: the old name gets a message, not "unknown key"
RENAMED = {"data.shuffle_buffer": "data.shuffle_window (how many places a sample may move within its lane; "
                                  "there is no buffer: the order is computed, not streamed)"}


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
            if f"{name}.{key}" in RENAMED:
                raise ConfigError(f"{where}: {name}.{key} is now {RENAMED[f'{name}.{key}']}")
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


def choice(value: Any, choices: tuple, what: str) -> None:
    """Refuse `value` unless it is one of `choices`, naming the key and the choices."""
    if value not in choices:
        raise ConfigError(f"{what} '{value}' is not valid; choose one of {', '.join(map(str, choices))}")


def validate(cfg: Config) -> None:
    """Check every value the schema can judge alone, so that a bad config fails before any work starts.

    Model and loss names need the model stack: segdist.training.preflight checks them.
    """
    choice(cfg.optim.name, OPTIMIZERS, "optim.name")
    choice(cfg.optim.scheduler, SCHEDULERS, "optim.scheduler")
    if cfg.train.mixed_precision is not None:
        choice(cfg.train.mixed_precision, (*PRECISIONS, "auto"), "train.mixed_precision")
    choice(cfg.data.resize_side, RESIZE_SIDES, "data.resize_side")
    validate_fine_tuning(cfg)
    choice(cfg.data.normalize, NORMALIZE, "data.normalize")
    choice(cfg.train.nonfinite, NONFINITE, "train.nonfinite")
    for tracker in cfg.train.log_with:
        choice(tracker, TRACKERS, "train.log_with")
    if cfg.train.ema_decay is not None and not 0.0 < cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay {cfg.train.ema_decay} must be between 0 and 1 (e.g. 0.999)")
    if cfg.train.budget is not None:
        try:
            parse_duration(cfg.train.budget)
        except ValueError as exc:
            raise ConfigError(f"train.budget: {exc}") from None
    if not cfg.data.train_split:
        raise ConfigError("data.train_split names no split")
    if isinstance(cfg.loss.class_weights, str):
        choice(cfg.loss.class_weights, CLASS_WEIGHTS, "loss.class_weights")
    if len(cfg.data.crop_size) != 2 or any(int(s) % 32 for s in cfg.data.crop_size):
        raise ConfigError(f"data.crop_size {cfg.data.crop_size} must be [H, W], both multiples of 32")
    for key in ("batch_size", "val_batch_size"):
        if int(getattr(cfg.data, key)) < 1:
            raise ConfigError(f"data.{key} must be at least 1")
    for key in ("chunk", "lanes", "epoch_samples"):
        if getattr(cfg.data, key) is not None and getattr(cfg.data, key) < 1:
            raise ConfigError(f"data.{key} must be at least 1")
    if cfg.data.shuffle_window < 0:
        raise ConfigError("data.shuffle_window must be at least 0")
    if cfg.optim.accumulate < 1:
        raise ConfigError("optim.accumulate must be at least 1")
    validate_augmentation(cfg.data)


def validate_augmentation(data: DataConfig) -> None:
    """The crop redraw ratio and the progressive-resizing stages."""
    if data.cat_max_ratio is not None and not 0.0 < data.cat_max_ratio <= 1.0:
        raise ConfigError(f"data.cat_max_ratio {data.cat_max_ratio} must be in (0, 1], e.g. 0.75")
    schedule = data.resize_schedule
    if schedule is None:
        return
    example = "e.g. [[0.5, 0.7], [1.0, 0.3]]"
    if not schedule or not all(isinstance(stage, list) and len(stage) == 2 for stage in schedule):
        raise ConfigError(f"data.resize_schedule {schedule} must list [scale, share] stages, {example}")
    if any(scale <= 0 or share <= 0 for scale, share in schedule) or abs(sum(s for _, s in schedule) - 1) > 1e-6:
        raise ConfigError(f"data.resize_schedule {schedule}: scales and shares must be above 0 and the shares "
                          f"add up to 1, {example}")


def validate_fine_tuning(cfg: Config) -> None:
    """The fine-tuning options: freezing, per-part learning rates, the auxiliary head, the LR floor."""
    freeze = cfg.model.freeze_encoder
    if not isinstance(freeze, bool) and (freeze < 0 or (isinstance(freeze, float) and freeze >= 1)):
        raise ConfigError(f"model.freeze_encoder {freeze} must be true/false, a step count (e.g. 500) or a share "
                          f"of the steps below 1 (e.g. 0.1)")
    if cfg.model.aux_head < 0:
        raise ConfigError(f"model.aux_head {cfg.model.aux_head} is a loss weight: 0 (off) or more, e.g. 0.4")
    for key in ("encoder_lr_scale", "aux_lr_scale", "min_lr"):
        if getattr(cfg.optim, key) < 0:
            raise ConfigError(f"optim.{key} must be at least 0")
    if cfg.optim.layer_decay is not None and not 0.0 < cfg.optim.layer_decay <= 1.0:
        raise ConfigError(f"optim.layer_decay {cfg.optim.layer_decay} must be in (0, 1], e.g. 0.75")
    if cfg.optim.min_lr >= cfg.optim.lr:
        raise ConfigError(f"optim.min_lr {cfg.optim.min_lr} must be below optim.lr {cfg.optim.lr}")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (temporary name, then rename), with every credential masked.

    A credential in a value (`data.shards` as `https://user:password@host/...`, `...?X-Amz-Signature=...`,
    `pipe:TOKEN=... curl ...`) is written as `***` (segdist.utils.secrets) and the file is then
    readable by its owner only (0600; else the umask decides). The file still loads, but a masked
    `data.shards` cannot be read: `--resume` and `segdist evaluate --shards` take the real one again.
    """
    values, masked = _redacted(cfg.to_dict())
    write_text_atomic(Path(path), yaml.safe_dump(values, sort_keys=False), mode=0o600 if masked else None)


def _redacted(value: Any) -> tuple[Any, bool]:
    """`value` (nested dicts and lists) with credentials in its strings masked, and whether any was."""
    if isinstance(value, dict):
        pairs = {key: _redacted(item) for key, item in value.items()}
        return {key: item for key, (item, _) in pairs.items()}, any(masked for _, masked in pairs.values())
    if isinstance(value, (list, tuple)):
        items = [_redacted(item) for item in value]
        return [item for item, _ in items], any(masked for _, masked in items)
    if isinstance(value, str):
        text = redact(value)
        return text, text != value
    return value, False
