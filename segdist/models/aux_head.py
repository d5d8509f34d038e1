"""An auxiliary FCN head on the encoder's second-deepest feature map, for training only.

MMSegmentation's ``auxiliary_head`` (loss weight 0.4) and torchvision's ``--aux-loss`` (0.5) add a
second, shallower supervision that speeds up and steadies the training of deep encoders. smp
builds no such head, so ``add_aux_head`` attaches one to any smp model: the head is a submodule
(``aux_head.*`` keys, so checkpoints and ``--resume`` keep it) and two forward hooks, one keeping
the encoder's ``features[-2]``, one turning the model's output into ``(logits, aux_logits)``. Hooks
rather than a wrapper module keep every other state-dict key as it was; the hooks are bound
methods of the head, so a deep copy of the model (EMA) calls its own copy of the head. In eval
mode the model returns its logits unchanged; ``remove_aux_head`` takes head and hooks away for
evaluate, predict and export.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

AUX_HEAD = "aux_head"  # the head's attribute on the model, and the prefix of its state-dict keys

__all__ = ["AUX_HEAD", "AuxHead", "add_aux_head", "remove_aux_head"]


class AuxHead(nn.Sequential):
    """An FCN head: 3x3 conv to in_channels // 4, BN, ReLU, Dropout2d(0.1), 1x1 conv to the classes.

    torchvision's ``FCNHead`` (which drops elements, ``Dropout``) with MMSeg's channel dropout; over
    ResNet-50's 1024-channel stage 3 both have 256 inner channels.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inner = max(in_channels // 4, 1)
        super().__init__(nn.Conv2d(in_channels, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner),
                         nn.ReLU(inplace=True), nn.Dropout2d(0.1), nn.Conv2d(inner, num_classes, 1))
        self._features: torch.Tensor | None = None

    def keep_features(self, encoder: nn.Module, args: tuple, output: object) -> None:
        """Encoder forward hook: keep features[-2] in training mode (DPT's encoder returns (features, tokens))."""
        if self.training:
            features = output[0] if isinstance(output, tuple) else output
            self._features = features[-2]

    def add_aux_logits(self, model: nn.Module, args: tuple, logits: torch.Tensor) -> object:
        """Model forward hook: ``(logits, aux_logits)`` in training mode, aux upsampled to the logits' size."""
        features, self._features = self._features, None
        if not self.training or features is None:
            return None  # the output unchanged
        # accelerate's mixed precision autocasts inside the model's forward only, not in its hooks
        device = features.device.type
        low = features.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(device)
        with torch.autocast(device, dtype=features.dtype) if low else contextlib.nullcontext():
            aux = self(features)
        aux = F.interpolate(aux, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return logits, aux.to(logits.dtype)


def add_aux_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Attach an ``AuxHead`` to an smp model (in place; returns it); its encoder must return a list of features."""
    in_channels = model.encoder.out_channels[-2]
    head = AuxHead(in_channels, num_classes)
    model.add_module(AUX_HEAD, head)
    model.encoder.register_forward_hook(head.keep_features)
    model.register_forward_hook(head.add_aux_logits)
    return model


def remove_aux_head(model: nn.Module) -> nn.Module:
    """Take the aux head and its hooks off `model` (in place; returns it): the model of evaluate, predict, export."""
    head = getattr(model, AUX_HEAD, None)
    if head is None:
        return model
    for module in (model, model.encoder):
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__self__", None) is head:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
    delattr(model, AUX_HEAD)
    return model
