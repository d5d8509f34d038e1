"""Segmentation losses.

``build_loss(name, num_classes, ...)`` returns an ``nn.Module`` mapping
``(logits [N, C, H, W], target [N, H, W] long)`` to a scalar. Every loss skips
pixels labelled ``ignore_index``; a batch with no valid pixel gives a loss of 0
whose gradient is all zeros (plain ``nn.CrossEntropyLoss`` would give NaN and
smp's ``LovaszLoss`` an empty tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss
from torch import nn

__all__ = ["LOSSES", "build_loss", "AuxLoss", "FocalLoss", "WeightedSum", "ZeroIfAllIgnored"]

LOSSES = ("ce", "weighted_ce", "focal", "dice", "dice_ce", "lovasz")


def build_loss(
    name: str,
    num_classes: int,
    *,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
    focal_gamma: float = 2.0,
    focal_alpha: Sequence[float] | None = None,
    dice_weight: float = 0.5,
) -> nn.Module:
    """Build the loss ``name`` (one of ``LOSSES``).

    Args:
        name: loss name.
        num_classes: number of classes C (checks the length of per-class lists).
        ignore_index: target value of pixels that do not contribute.
        class_weights: per-class CE weights; required by ``weighted_ce``, optional
            for ``dice_ce`` (weights its CE term), rejected by the other losses.
        focal_gamma: focusing parameter of ``focal``.
        focal_alpha: optional per-class weights of ``focal``.
        dice_weight: ``dice_ce = dice_weight * dice + (1 - dice_weight) * ce``.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")
    if class_weights is not None and name not in ("weighted_ce", "dice_ce"):
        raise ValueError(
            f"class_weights are not used by loss {name!r}; use 'weighted_ce' or 'dice_ce'."
        )
    if focal_alpha is not None and name != "focal":
        raise ValueError(f"focal_alpha is only used by loss 'focal', not {name!r}.")

    if name == "ce":
        loss: nn.Module = nn.CrossEntropyLoss(ignore_index=ignore_index)
    elif name == "weighted_ce":
        if class_weights is None:
            raise ValueError("Loss 'weighted_ce' requires class_weights.")
        weights = _per_class_tensor(class_weights, num_classes, "class_weights")
        loss = nn.CrossEntropyLoss(weight=weights, ignore_index=ignore_index)
    elif name == "focal":
        alpha = _optional_per_class_tensor(focal_alpha, num_classes, "focal_alpha")
        loss = FocalLoss(gamma=focal_gamma, alpha=alpha, ignore_index=ignore_index)
    elif name == "dice":
        loss = DiceLoss(mode="multiclass", ignore_index=ignore_index)
    elif name == "dice_ce":
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}.")
        weights = _optional_per_class_tensor(class_weights, num_classes, "class_weights")
        loss = WeightedSum(
            DiceLoss(mode="multiclass", ignore_index=ignore_index),
            nn.CrossEntropyLoss(weight=weights, ignore_index=ignore_index),
            first_weight=dice_weight,
        )
    else:  # lovasz
        loss = LovaszLoss(mode="multiclass", ignore_index=ignore_index)
    return ZeroIfAllIgnored(loss, ignore_index)


def _per_class_tensor(values: Sequence[float], num_classes: int, what: str) -> torch.Tensor:
    """Convert a per-class list to a float tensor, checking it has ``num_classes`` entries."""
    if len(values) != num_classes:
        raise ValueError(f"{what} has {len(values)} entries but num_classes is {num_classes}.")
    return torch.as_tensor(values, dtype=torch.float32)


def _optional_per_class_tensor(
    values: Sequence[float] | None, num_classes: int, what: str
) -> torch.Tensor | None:
    return None if values is None else _per_class_tensor(values, num_classes, what)


class FocalLoss(nn.Module):
    """Multiclass focal loss (Lin et al., 2017), averaged over non-ignored pixels.

    ``loss = -alpha[y] * (1 - p_y) ** gamma * log(p_y)``; with ``gamma=0`` and no
    alpha this is cross-entropy. With alpha it is divided by the number of valid
    pixels, not by the sum of their alphas as a weighted CE would be.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: torch.Tensor | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        # Ignored pixels read class 0 so that gather stays in range; they are masked below.
        safe_target = torch.where(valid, target, 0).unsqueeze(1)
        log_p = F.log_softmax(logits, dim=1).gather(1, safe_target).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[safe_target.squeeze(1)]
        loss = torch.where(valid, loss, 0.0)
        return loss.sum() / valid.sum().clamp_min(1)


class WeightedSum(nn.Module):
    """``first_weight * first + (1 - first_weight) * second``."""

    def __init__(self, first: nn.Module, second: nn.Module, first_weight: float) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.first_weight = first_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        first = self.first(logits, target)
        second = self.second(logits, target)
        return self.first_weight * first + (1.0 - self.first_weight) * second


class ZeroIfAllIgnored(nn.Module):
    """Return 0, with zero gradients, when every target pixel is ``ignore_index``.

    Otherwise defers to ``loss``. This costs one host-device sync per call.
    """

    def __init__(self, loss: nn.Module, ignore_index: int) -> None:
        super().__init__()
        self.loss = loss
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if bool((target == self.ignore_index).all()):
            # Keeps the graph connected to the logits (and so to every parameter), as DDP expects.
            return logits.sum() * 0.0
        return self.loss(logits, target)


class AuxLoss(nn.Module):
    """``loss(main) + aux_weight * loss(aux)`` for a model with an auxiliary head, which returns
    ``(main, aux)`` in training mode (``segdist.models.aux_head``); ``loss(logits)`` for plain logits."""

    def __init__(self, loss: nn.Module, aux_weight: float) -> None:
        super().__init__()
        self.loss = loss
        self.aux_weight = aux_weight

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, tuple):
            main, aux = output
            return self.loss(main, target) + self.aux_weight * self.loss(aux, target)
        return self.loss(output, target)
