"""Optimizer, learning-rate schedule and loss as a config describes them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from segdist.config import Config, OptimConfig
from segdist.data import DatasetInfo
from segdist.manifest import class_weights


def build_optimizer(o: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(o: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):  # noqa: ANN201
    """Per-step LambdaLR (poly, cosine, step, constant, with linear warmup) or ReduceLROnPlateau."""
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=o.plateau_factor, patience=o.plateau_patience)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(o, total_steps))


def set_total_steps(scheduler, o: OptimConfig, total_steps: int) -> None:  # noqa: ANN001
    """Stretch or shrink a LambdaLR schedule to `total_steps` from the next step on (plateau: nothing to do)."""
    if not is_plateau(scheduler):
        scheduler.lr_lambdas = [lr_factor(o, total_steps)]


def lr_factor(o: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier at each step: linear warmup, then the configured decay over `total_steps`."""
    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        if o.scheduler == "poly":
            return (1 - progress) ** o.poly_power
        if o.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if o.scheduler == "step":
            return o.gamma ** (step // o.step_size)
        return 1.0

    return factor


def is_plateau(scheduler) -> bool:  # noqa: ANN001
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_criterion(cfg: Config, info: DatasetInfo) -> torch.nn.Module:
    """The loss; class weights by name come from the training splits' pixel statistics."""
    from segdist.losses import build_loss

    weights = cfg.loss.class_weights
    if isinstance(weights, str):
        weights = class_weights(info.combined(cfg.data.train_split), weights)
    return build_loss(cfg.loss.name, info.num_classes, ignore_index=info.ignore_index, class_weights=weights,
                      focal_gamma=cfg.loss.focal_gamma, focal_alpha=cfg.loss.focal_alpha,
                      dice_weight=cfg.loss.dice_weight)
