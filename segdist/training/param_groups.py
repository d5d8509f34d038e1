"""The optimizer's parameter groups: one LR per model part, no weight decay on norms and biases, layer decay.

A segmentation model's parts are its top-level modules: the encoder (`optim.encoder_lr_scale`, and
`optim.layer_decay` within it), the auxiliary head (`optim.aux_lr_scale`, torchvision's 10x) and the
rest (decoder, segmentation head) at `optim.lr`. Within a part timm's own `param_groups_weight_decay`
puts 1-D parameters and biases in a group without weight decay (timm's rule, and MMSeg's
`paramwise_cfg=dict(norm_decay_mult=0)`) unless `optim.decay_norm_bias` (what torchvision's
references and MMSeg's default optimizer wrapper do); with `optim.layer_decay` timm's `param_groups_layer_decay`
scales the encoder's LR by depth instead. Every group carries a `name` and its `lr_scale`, so the
grouping shows in the optimizer and in every checkpoint of its state.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from segdist.config import OptimConfig
from segdist.errors import ConfigError

ENCODER, AUX_HEAD = "encoder", "aux_head"


def parameter_groups(o: OptimConfig, model: nn.Module, encoder: str | None = None) -> list[dict[str, Any]]:
    """Groups for `torch.optim`: each with `params`, `lr`, `weight_decay`, `lr_scale` and `name`.

    `encoder` (the timm name) lets layer decay find the layer order of an smp encoder (see layer_matcher).
    Parameters that do not require gradients (a frozen encoder) are left out.
    """
    groups = []
    for part, module in model.named_children():
        scale = {ENCODER: o.encoder_lr_scale, AUX_HEAD: o.aux_lr_scale}.get(part, 1.0)
        if part == ENCODER and o.layer_decay is not None:
            found = _layer_decay_groups(o, module, encoder)
        else:
            found = _decay_groups(o, module)
        for group in found:
            group["lr_scale"] = scale * group.get("lr_scale", 1.0)
            group["lr"] = o.lr * group["lr_scale"]
            group["name"] = f"{part}/{group.pop('group', 'decay' if group['weight_decay'] else 'no_decay')}"
            groups.append(group)
    if not groups:
        raise ConfigError("the model has no trainable parameter (a frozen encoder and nothing else?)")
    _refuse_unscaled_options(o, model)
    return groups


def _decay_groups(o: OptimConfig, module: nn.Module) -> list[dict[str, Any]]:
    """One part's groups: with and without weight decay (or one group with `optim.decay_norm_bias`)."""
    if o.decay_norm_bias:
        params = [p for p in module.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": o.weight_decay}] if params else []
    return param_groups_weight_decay(module, o.weight_decay, no_weight_decay_list=_no_decay_names(module))


def _layer_decay_groups(o: OptimConfig, encoder_wrapper: nn.Module, encoder: str | None) -> list[dict[str, Any]]:
    """The encoder's groups by depth (timm's param_groups_layer_decay), named `layer_<i>[_no_decay]`."""
    net = getattr(encoder_wrapper, "model", encoder_wrapper)  # the timm network in smp's wrapper
    named = _WithMatcher(net, layer_matcher(net, encoder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = param_groups_layer_decay(named, o.weight_decay, no_weight_decay_list=_no_decay_names(net),
                                          weight_decay_exclude_1d=not o.decay_norm_bias, layer_decay=o.layer_decay)
    for group in groups:  # steps below the top layer: lr_scale = layer_decay ** depth
        depth = round(math.log(group["lr_scale"]) / math.log(o.layer_decay)) if o.layer_decay < 1 else 0
        group["group"] = f"depth_{depth}" + ("" if group["weight_decay"] else "_no_decay")
    return groups


def layer_matcher(net: nn.Module, encoder: str | None) -> Any:
    """timm's `group_matcher` for `net`, loosened for smp's feature extractor.

    smp wraps a CNN in timm's FeatureListNet, which has no group_matcher and renames the top-level
    Sequential children (`stages.0` -> `stages_0`); the matcher of the same model built on the meta
    device, with each `\\.` accepting `.` or `_`, orders its parameters the same way.
    """
    if hasattr(net, "group_matcher"):
        return net.group_matcher(coarse=False)
    if encoder is None:
        raise ConfigError("optim.layer_decay needs the encoder's timm name")
    import timm

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = timm.create_model(encoder, pretrained=False)
    if not hasattr(full, "group_matcher"):
        raise ConfigError(f"optim.layer_decay: timm's {encoder} declares no layer order (group_matcher); "
                          f"use an encoder that does (ViT, ConvNeXt, Swin, ResNet, EfficientNet, ...)")
    return _loosened(full.group_matcher(coarse=False))


def _loosened(spec: Any) -> Any:
    """A group_matcher spec whose regexes accept `_` wherever they ask for a literal `.`."""
    if isinstance(spec, str):
        return spec.replace(r"\.", "[._]")
    if isinstance(spec, dict):
        return {key: _loosened(value) for key, value in spec.items()}
    if isinstance(spec, (list, tuple)):
        return type(spec)(_loosened(item) if isinstance(item, (str, list, tuple, dict)) else item for item in spec)
    return spec


class _WithMatcher:
    """A module seen by timm's layer-decay grouping: its parameters, and the matcher that orders them."""

    def __init__(self, module: nn.Module, matcher: Any):
        self.module, self.matcher = module, matcher

    def group_matcher(self, coarse: bool = False) -> Any:  # noqa: ARG002 - timm's signature
        return self.matcher

    def named_parameters(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self.module.named_parameters(*args, **kwargs)


def _no_decay_names(module: nn.Module) -> list[str]:
    """Parameter names a timm model excludes from weight decay (position embeddings, class tokens)."""
    for candidate in (module, getattr(module, "model", None)):
        names = getattr(candidate, "no_weight_decay", None)
        if callable(names):
            prefix = "model." if candidate is not module else ""
            return [prefix + name for name in names()]
    return []


def _refuse_unscaled_options(o: OptimConfig, model: nn.Module) -> None:
    """Per-part options on a model without that part would silently do nothing."""
    parts = dict(model.named_children())
    for option, part in (("encoder_lr_scale", ENCODER), ("aux_lr_scale", AUX_HEAD)):
        if getattr(o, option) != 1.0 and part not in parts:
            raise ConfigError(f"optim.{option} is set but the model has no {part} "
                              f"(its parts: {', '.join(parts)})")
    if o.layer_decay is not None and ENCODER not in parts:
        raise ConfigError(f"optim.layer_decay is set but the model has no encoder (its parts: {', '.join(parts)})")
