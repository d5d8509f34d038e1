"""The training config: typed sections, YAML recipes and dotted overrides. It names no consumer.

    schema.py    the dataclasses (data, model, loss, optim, train), their choices, parse_duration
    loading.py   YAML 1.2 files, `section.key=value` overrides, type and choice checks, save_config
    coerce.py    a YAML value -> the field's declared type, or TypeMismatch

Consumers read the config; the config imports none of them (the model and loss checks that need
the model stack are segdist.models.preflight).
"""

from segdist.config.loading import apply, load_config, parse_override, read_yaml, save_config, validate
from segdist.config.schema import Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig, parse_duration
from segdist.errors import ConfigError

__all__ = ["Config", "DataConfig", "ModelConfig", "LossConfig", "OptimConfig", "TrainConfig", "ConfigError",
           "load_config", "save_config", "parse_override", "apply", "read_yaml", "validate", "parse_duration"]
