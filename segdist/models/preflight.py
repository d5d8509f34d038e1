"""The config checks that need the model stack, run before any work starts (`train`, `bench-data`).

The config itself names no consumer; the architecture and loss names and a dry run of the model
at the training batch shape are checked here, with the key to change named.
"""

from __future__ import annotations

from segdist.config import Config
from segdist.config.loading import choice
from segdist.errors import ConfigError
from segdist.models.factory import check_model
from segdist.models.inference import parse_tta
from segdist.models.losses import LOSSES
from segdist.models.options import ARCHS, ModelOptionError


def check_config(cfg: Config) -> Config:
    """Raise ConfigError where `cfg`'s model or loss cannot train; returns `cfg` unchanged."""
    choice(cfg.model.arch, ARCHS, "model.arch")
    choice(cfg.loss.name, LOSSES, "loss.name")
    choice(cfg.model.checkpoint, ("best", "last"), "model.checkpoint")
    try:
        parse_tta(cfg.model.tta)
    except ValueError as exc:
        raise ConfigError(f"model.tta: {exc}") from None
    m = cfg.model
    try:  # a dry run at the training batch shape, on PyTorch's meta device (no memory, no weights)
        check_model(m.arch, m.encoder, output_stride=m.output_stride, encoder_kwargs=m.encoder_kwargs,
                    arch_kwargs=m.arch_kwargs, input_shape=(int(cfg.data.batch_size), 3, *map(int, cfg.data.crop_size)),
                    aux_head=m.aux_head > 0)
    except ModelOptionError as exc:
        raise ConfigError(f"model.{exc.option}: {exc}") from None
    return cfg
