"""The rules a model's options must follow, checked before anything is built; errors name the option.

Architectures are segmentation-models-pytorch's own registry (``MODEL_ARCHITECTURES_MAPPING``, class
names lower-cased) plus segdist's ``resunet_attention``. Encoder kinds per architecture (smp 0.6):

* DPT takes ViT-like timm encoders (one patch stride for every block), with a patch size dividing
  32 since segdist pads inputs to multiples of 32.
* Every other architecture takes hierarchical encoders (feature maps at strides 2..32, 4..32 or
  1..32: CNNs, ConvNeXt, Swin, ...) and smp's MiT, except U-Net++ and Linknet, which smp does not
  build over MiT.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import segmentation_models_pytorch as smp

from segdist.models.encoders import check_encoder_name, feature_strides, is_hierarchical, is_mit, is_vit_like
from segdist.models.resunet import parse_base_width

RESUNET = "resunet_attention"
SMP_ARCHS = tuple(smp.MODEL_ARCHITECTURES_MAPPING)
ARCHS = (*SMP_ARCHS, RESUNET)
MIT_UNSUPPORTED = ("unetplusplus", "linknet", "dpt")  # smp refuses its MiT encoders there

# Options that smp or segdist set on the timm model; the value names the segdist option to use instead.
RESERVED_ENCODER_KWARGS = {"in_chans": "in_channels", "pretrained": "encoder_weights",
                           "output_stride": "output_stride", "features_only": None, "out_indices": None}
# Architecture options that segdist sets itself; the value says why.
MANAGED_ARCH_KWARGS = {
    "encoder_name": "use the encoder option",
    "encoder_weights": "use the encoder_weights option",
    "in_channels": "set by segdist",
    "classes": "set from the dataset's classes",
    "activation": "segdist models return logits",
    "aux_params": "segdist models return one output",
    "encoder_output_stride": "use the output_stride option",
    "kwargs": "use encoder_kwargs",
}


class ModelOptionError(ValueError):
    """A model option, or a combination of them, that cannot work; ``option`` names the one to change."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def check_options(arch: str, encoder: str, output_stride: int, encoder_kwargs: Any, arch_kwargs: Any) -> None:
    """Raise ``ModelOptionError`` for an unknown name or a combination the rules above exclude."""
    if arch not in ARCHS:
        raise ModelOptionError("arch", f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}.")
    _check_mapping("encoder_kwargs", encoder_kwargs)
    _check_mapping("arch_kwargs", arch_kwargs)
    if arch == RESUNET:
        _check_resunet(encoder, encoder_kwargs, arch_kwargs)
        return
    try:
        check_encoder_name(encoder)
    except ValueError as exc:
        raise ModelOptionError("encoder", str(exc)) from None
    _check_encoder_kwargs(arch, encoder, encoder_kwargs)
    _check_arch_kwargs(arch, arch_kwargs)
    choices = output_stride_choices(arch)
    if choices and output_stride not in choices:
        raise ModelOptionError("output_stride", f"{arch} takes output_stride in {choices}, got {output_stride}.")
    _check_encoder_fits(arch, encoder)


def arch_parameters(arch: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of an smp architecture."""
    return dict(inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch]).parameters)


def output_stride_choices(arch: str) -> tuple[int, ...] | None:
    """The output strides an smp architecture takes (its ``Literal`` annotation), None if it has no such option."""
    parameter = arch_parameters(arch).get("encoder_output_stride") if arch in SMP_ARCHS else None
    return None if parameter is None else typing.get_args(parameter.annotation)


def _check_mapping(option: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ModelOptionError(option, f"must be a mapping of option names to values, got {value!r}.")


def _check_resunet(encoder: str, encoder_kwargs: dict, arch_kwargs: dict) -> None:
    try:
        parse_base_width(encoder)
    except ValueError as exc:
        raise ModelOptionError("encoder", str(exc)) from None
    for option, value in (("encoder_kwargs", encoder_kwargs), ("arch_kwargs", arch_kwargs)):
        if value:
            raise ModelOptionError(option, f"{RESUNET} is segdist's own model; it takes no {option}.")


def _check_encoder_kwargs(arch: str, encoder: str, encoder_kwargs: dict) -> None:
    if encoder_kwargs and is_mit(encoder):
        raise ModelOptionError("encoder_kwargs", f"smp's own MiT encoders ({encoder}) take no options (smp would "
                                                 "ignore them); encoder_kwargs go to timm encoders only.")
    for key in encoder_kwargs:
        if key in RESERVED_ENCODER_KWARGS:
            instead = RESERVED_ENCODER_KWARGS[key]
            raise ModelOptionError("encoder_kwargs", f"{key!r} is set by segdist and smp"
                                   + (f"; use the {instead} option instead." if instead else "."))
        if key in arch_parameters(arch):
            raise ModelOptionError("encoder_kwargs", f"{key!r} is an option of smp's {arch}, not of the timm "
                                                     "encoder: put it in arch_kwargs.")


def _check_arch_kwargs(arch: str, arch_kwargs: dict) -> None:
    parameters = arch_parameters(arch)
    for key in arch_kwargs:
        if key in MANAGED_ARCH_KWARGS:
            raise ModelOptionError("arch_kwargs", f"{key!r} cannot be set here: {MANAGED_ARCH_KWARGS[key]}.")
        if "dropout" in key:
            raise ModelOptionError("arch_kwargs", f"{key!r} cannot be set here: use decoder_dropout (one dropout, "
                                                  "before the classifier, for every architecture).")
        if key not in parameters:
            valid = [name for name in parameters if name not in MANAGED_ARCH_KWARGS and "dropout" not in name]
            raise ModelOptionError("arch_kwargs", f"smp's {arch} has no option {key!r}; it has {', '.join(valid)}.")


def _check_encoder_fits(arch: str, encoder: str) -> None:
    """The encoder kinds each architecture takes (see the module docstring)."""
    if is_mit(encoder):
        if arch in MIT_UNSUPPORTED:
            others = ", ".join(a for a in SMP_ARCHS if a not in MIT_UNSUPPORTED)
            raise ModelOptionError("encoder", f"smp does not build {arch} over its MiT encoders ({encoder}); "
                                              f"MiT works with {others}.")
        return
    strides = feature_strides(encoder)
    if strides is None:
        return  # timm cannot describe it without building it; the build reports any problem
    if arch == "dpt":
        if not is_vit_like(strides):
            raise ModelOptionError("encoder", f"dpt needs a ViT-like timm encoder (one patch stride for every block, "
                                              f"e.g. vit_small_patch16_224, deit_tiny_patch16_224); {encoder} has "
                                              f"feature strides {strides}.")
        if 32 % strides[0]:
            raise ModelOptionError("encoder", f"{encoder}'s patch stride {strides[0]} does not divide 32, the "
                                              "multiple segdist pads inputs to; use a ViT with patch size 8, 16 or 32.")
    elif not is_hierarchical(strides):
        hint = "; it is ViT-like: use arch dpt" if is_vit_like(strides) else ""
        raise ModelOptionError("encoder", f"{arch} needs a hierarchical encoder (feature maps at strides 2, 4, ..., "
                                          f"32 or 4, ..., 32: resnet, convnext, efficientnet, MiT, ...); {encoder} "
                                          f"has feature strides {strides}{hint}.")
