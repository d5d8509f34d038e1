"""Optimizer, learning-rate schedule and loss as a config describes them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from segdist.config import Config, OptimConfig
from segdist.data.info import DatasetInfo
from segdist.format.class_stats import class_weights


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


def refit_schedule(scheduler, o: OptimConfig, total_steps: int, refits: list) -> None:  # noqa: ANN001
    """Give a LambdaLR the schedule of `total_steps` bent by `refits` (see lr_factor); plateau: nothing to do."""
    if not is_plateau(scheduler):
        scheduler.lr_lambdas = [lr_factor(o, total_steps, refits)]


def lr_factor(o: OptimConfig, total_steps: int, refits: list = ()) -> Callable[[float], float]:
    """The LR multiplier at each step: linear warmup, then the configured decay over `total_steps`.

    Each `(at, steps)` in `refits` (a budget's re-plans, in order) fits what is left of the schedule
    after step `at` into a new total of `steps`: the LR is continuous there and the decay still
    ends at the last step. Refitted at the end of the warmup, it is the plain schedule of `steps`.
    """
    factor = _schedule(o, total_steps)
    for at, steps in refits:
        factor, total_steps = _stretched(factor, at, (total_steps - at) / max(steps - at, 1)), steps
    return factor


def _stretched(factor: Callable[[float], float], at: int, scale: float) -> Callable[[float], float]:
    return lambda step: factor(step if step <= at else at + (step - at) * scale)


def _schedule(o: OptimConfig, total_steps: int) -> Callable[[float], float]:
    def factor(step: float) -> float:
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
    from segdist.models.losses import build_loss

    weights = cfg.loss.class_weights
    if isinstance(weights, str):
        weights = class_weights(info.combined(cfg.data.train_split), weights)
    return build_loss(cfg.loss.name, info.num_classes, ignore_index=info.ignore_index, class_weights=weights,
                      focal_gamma=cfg.loss.focal_gamma, focal_alpha=cfg.loss.focal_alpha,
                      dice_weight=cfg.loss.dice_weight)
