"""Segmentation model factory: every segmentation-models-pytorch architecture, and segdist's own residual U-Net.

``build_model(arch, encoder, num_classes, ...)`` is the single entry point, in the spirit of
``smp.create_model`` (which it calls): an architecture is its smp class name lower-cased, looked up
in smp's own registry (unet, unetplusplus, manet, linknet, fpn, pspnet, deeplabv3, deeplabv3plus,
pan, upernet, segformer, dpt), plus ``resunet_attention`` (``segdist.resunet``).

* Encoders (``segdist.encoders``): any timm model with feature maps (``"tu-" + encoder`` for smp),
  or smp's own MiT (``mit_b0`` .. ``mit_b5``); which kinds each architecture takes is in
  ``segdist.model_options``, and ``check_model`` says so before anything is built.
* ``encoder_kwargs`` go to ``timm.create_model`` (e.g. ``drop_path_rate``); DPT gets
  ``dynamic_img_size=True`` unless they say otherwise, since segdist runs models at any size.
  ``arch_kwargs`` go to the smp architecture (e.g. ``decoder_channels``, ``decoder_attention_type``).
* ``output_stride``: the encoder's output stride where the architecture has one (DeepLabV3/V3+:
  8 or 16, PAN: 16 or 32); the other architectures ignore it.
* ``decoder_dropout``: one ``nn.Dropout2d`` on the input of the final classifier convolution of
  every architecture (MMSegmentation's place, before ``conv_seg``); smp's own decoder dropouts
  (ASPP 0.5, FPN 0.2, PSP 0.2, DPT head 0.1) are set to 0. The module is there at p=0 too, so
  state-dict keys do not depend on the rate.
* Pyramid pooling (PSPNet, UPerNet) is swapped for ``segdist.pooling``'s exact, exportable version.
* ``aux_head``: an auxiliary FCN head on the encoder's second-deepest features (``aux_head.py``),
  smp architectures only; in training mode the model then returns ``(logits, aux_logits)``.

Every model maps ``[N, in_channels, H, W]`` to logits ``[N, num_classes, H, W]`` for H and W
divisible by 32 (PAN needs at least 8 x output_stride).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segdist.models.aux_head import add_aux_head
from segdist.models.encoders import (
    MIT_ENCODERS,
    checkpoint_path,
    encoder_module,
    is_mit,
    load_encoder_checkpoint,
    smp_encoder_name,
    smp_encoder_weights,
)
from segdist.models.options import (
    ARCHS,
    RESUNET,
    SMP_ARCHS,
    ModelOptionError,
    arch_parameters,
    check_options,
    output_stride_choices,
)
from segdist.models.pooling import make_pooling_exportable
from segdist.models.resunet import ResUNetAttention, parse_base_width

if TYPE_CHECKING:
    from segdist.config import ModelConfig

__all__ = ["ARCHS", "MIT_ENCODERS", "SMP_ARCHS", "ModelOptionError", "ResUNetAttention", "build_from_config",
           "build_model", "check_model", "output_stride_choices", "use_channels_last"]


def build_model(
    arch: str,
    encoder: str,
    num_classes: int,
    *,
    encoder_weights: str | None = None,
    output_stride: int = 16,
    decoder_dropout: float = 0.0,
    in_channels: int = 3,
    encoder_kwargs: dict[str, Any] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    aux_head: bool = False,
) -> nn.Module:
    """Build a segmentation model returning logits of shape ``[N, num_classes, H, W]``.

    Args:
        arch: one of ``ARCHS``.
        encoder: a timm model name (e.g. ``"resnet18"``), an smp MiT (``"mit_b0"``), or
            ``"base<width>"`` for ``resunet_attention``.
        num_classes: number of output channels.
        encoder_weights: ``None`` (random init), ``"imagenet"`` (the encoder's pretrained
            weights, needs hub access), or the path of a local checkpoint holding the encoder's
            classification state dict (possibly under ``"state_dict"`` or ``"model"``).
        output_stride: the encoder's output stride, for the architectures that have one.
        decoder_dropout: dropout probability on the classifier's input (see the module docstring).
        in_channels: number of input channels.
        encoder_kwargs: options for ``timm.create_model`` (timm encoders only).
        arch_kwargs: options for the smp architecture class (not those segdist sets itself).
        aux_head: add an auxiliary FCN head (``segdist.models.aux_head``): in training mode the model
            then returns ``(logits, aux_logits)``.
    """
    encoder_kwargs = {} if encoder_kwargs is None else encoder_kwargs
    arch_kwargs = {} if arch_kwargs is None else arch_kwargs
    check_options(arch, encoder, output_stride, encoder_kwargs, arch_kwargs)
    _check_aux_head(arch, aux_head)
    if not 0.0 <= decoder_dropout < 1.0:
        raise ModelOptionError("decoder_dropout", f"must be in [0, 1), got {decoder_dropout}.")
    if arch == RESUNET:
        if encoder_weights is not None:
            raise ModelOptionError("encoder_weights", f"{RESUNET} has no pretrained encoder; use None.")
        return ResUNetAttention(in_channels=in_channels, num_classes=num_classes,
                                base_width=parse_base_width(encoder), decoder_dropout=decoder_dropout)

    checkpoint = checkpoint_path(encoder_weights)
    # A local checkpoint is loaded after construction, on a randomly initialised encoder.
    model = _smp_model(arch, encoder, num_classes, pretrained=encoder_weights == "imagenet",
                       output_stride=output_stride, encoder_kwargs=encoder_kwargs, arch_kwargs=arch_kwargs,
                       in_channels=in_channels)
    _set_decoder_dropout(model, decoder_dropout)
    make_pooling_exportable(model)
    if arch == "dpt":
        _drop_vit_classifier(model)
    if checkpoint is not None:
        load_encoder_checkpoint(encoder_module(model), checkpoint)
    if aux_head:
        add_aux_head(model, num_classes)
    return model


def build_from_config(cfg: ModelConfig, num_classes: int, pretrained: bool = True) -> nn.Module:
    """The model of a config's ``model`` section; pretrained=False skips the encoder weights (a checkpoint follows)."""
    return build_model(cfg.arch, cfg.encoder, num_classes, encoder_weights=cfg.encoder_weights if pretrained else None,
                       output_stride=cfg.output_stride, decoder_dropout=cfg.decoder_dropout,
                       encoder_kwargs=cfg.encoder_kwargs, arch_kwargs=cfg.arch_kwargs, aux_head=cfg.aux_head > 0)


def use_channels_last(setting: bool | None, device: torch.device | str, mixed_precision: str | None = "no") -> bool:
    """Whether convolutions run channels-last: `model.channels_last`, or where it is null, where that is faster.

    On CPU oneDNN's convolutions are faster channels-last (benchmarks/channels_last.py); on CUDA the
    Tensor Cores gain from it under bf16/fp16 autocast, not in fp32.
    """
    if setting is not None:
        return setting
    kind = torch.device(device).type
    return kind == "cpu" or (kind == "cuda" and mixed_precision not in (None, "no"))


def check_model(arch: str, encoder: str, *, output_stride: int = 16, encoder_kwargs: dict[str, Any] | None = None,
                arch_kwargs: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
                aux_head: bool = False) -> None:
    """Raise ``ModelOptionError`` where ``build_model`` would fail or the model could not train on
    ``input_shape`` ``(N, C, H, W)``; quick, and nothing is allocated.

    After the rules of ``segdist.model_options``, the model is built and run once in training mode
    on PyTorch's meta device (shapes only). That catches what smp and timm refuse: an encoder that
    cannot be dilated, an unknown timm option, a fixed input size (Swin), an input too small (PAN),
    BatchNorm over a 1x1 map with a batch of one (DeepLab's image pooling). Where a model cannot run
    on the meta device (smp's MiT) that step is skipped and the real build reports any problem.
    """
    encoder_kwargs = {} if encoder_kwargs is None else encoder_kwargs
    arch_kwargs = {} if arch_kwargs is None else arch_kwargs
    check_options(arch, encoder, output_stride, encoder_kwargs, arch_kwargs)
    _check_aux_head(arch, aux_head)
    if arch == RESUNET or is_mit(encoder):
        return
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real build warns, once
        try:
            model = _smp_model(arch, encoder, 2, pretrained=False, output_stride=output_stride,
                               encoder_kwargs=encoder_kwargs, arch_kwargs=arch_kwargs, in_channels=3)
        except Exception as exc:
            if _meta_limitation(exc):
                return
            raise
        if aux_head:
            add_aux_head(model, 2)
        if input_shape is None:
            return
        try:
            model.train()(torch.empty(*input_shape))
        except Exception as exc:  # noqa: BLE001 (re-raised with the options named)
            if _meta_limitation(exc):
                return
            shape = "x".join(map(str, input_shape))
            message = f"{arch} over encoder {encoder} cannot run on a {shape} input: {exc}"
            raise ModelOptionError("arch", message) from None


def _check_aux_head(arch: str, aux_head: bool) -> None:
    if aux_head and arch == RESUNET:
        raise ModelOptionError("aux_head", f"{RESUNET} has no smp encoder to put an auxiliary head on; set "
                                           "aux_head to 0 or choose an smp architecture.")


def _meta_limitation(exc: Exception) -> bool:
    """True for errors of the meta device itself (an op without a meta kernel, a value read from a tensor)."""
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def _smp_model(arch: str, encoder: str, num_classes: int, *, pretrained: bool, output_stride: int,
               encoder_kwargs: dict[str, Any], arch_kwargs: dict[str, Any], in_channels: int) -> nn.Module:
    """``smp.create_model`` with smp's own decoder dropouts off and the output stride where the arch has one."""
    parameters = arch_parameters(arch)
    options: dict[str, Any] = {name: 0.0 for name in parameters if "dropout" in name}
    if "encoder_output_stride" in parameters:
        options["encoder_output_stride"] = output_stride
    timm_options = dict(encoder_kwargs)
    if arch == "dpt":
        timm_options.setdefault("dynamic_img_size", True)  # segdist evaluates and exports at any size
    try:
        return smp.create_model(arch, encoder_name=smp_encoder_name(encoder),
                                encoder_weights=smp_encoder_weights(encoder, pretrained), in_channels=in_channels,
                                classes=num_classes, **options, **arch_kwargs, **timm_options)
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        hint = ""
        if "output_stride" in str(exc):
            hint = f" (timm cannot dilate {encoder}; choose another encoder for output_stride={output_stride})"
        blamed = [option for option, given in (("encoder_kwargs", encoder_kwargs), ("arch_kwargs", arch_kwargs))
                  if any(key in str(exc) for key in given)]
        raise ModelOptionError(blamed[0] if blamed else "encoder",
                               f"cannot build {arch} over encoder {encoder}: {exc}{hint}") from exc


def _drop_vit_classifier(model: nn.Module) -> None:
    """Remove the ViT's final norm and classifier head, which DPT never runs (it reads intermediate blocks).

    Left in place they get no gradient, and DDP stops training on parameters without one.
    """
    vit = model.encoder.model
    if hasattr(vit, "prune_intermediate_layers"):
        vit.prune_intermediate_layers(len(vit.feature_info), prune_norm=True, prune_head=True)  # keeps every block


def _set_decoder_dropout(model: nn.Module, p: float) -> None:
    """Put ``nn.Dropout2d(p)`` right before the head's last convolution (the classifier), in place.

    smp's ``SegmentationHead`` is ``Sequential(conv, upsampling, activation)``: the dropout goes in
    front (its keys become ``segmentation_head.1.*``, as segdist's U-Nets always had). DPT's head ends
    ``..., Dropout(0.1), Conv2d``: that dropout is replaced, keys unchanged.
    """
    head = model.segmentation_head
    name = [name for name, module in head.named_modules() if isinstance(module, nn.Conv2d)][-1]
    parent_name, _, index = name.rpartition(".")
    container = head.get_submodule(parent_name) if parent_name else head
    index = int(index)
    if index and isinstance(container[index - 1], (nn.Dropout, nn.Dropout2d)):
        container[index - 1] = nn.Dropout2d(p)
    else:
        container.insert(index, nn.Dropout2d(p))
