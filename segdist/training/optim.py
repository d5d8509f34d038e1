"""Optimizer, learning-rate schedule and loss as a config describes them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from segdist.config import Config, OptimConfig
from segdist.data.info import DatasetInfo
from segdist.format.class_stats import class_weights
from segdist.training.param_groups import parameter_groups


def build_optimizer(o: OptimConfig, model: torch.nn.Module, encoder: str | None = None) -> torch.optim.Optimizer:
    """The optimizer over `model`'s parameter groups (training.param_groups: per part, decay, layer decay)."""
    groups = parameter_groups(o, model, encoder)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(o: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):  # noqa: ANN201
    """Per-step LambdaLR (poly, cosine, step, constant, with linear warmup) or ReduceLROnPlateau.

    One LR multiplier per parameter group: `optim.min_lr` is an LR, so each group's floor is a
    different share of its own base LR (MMSeg's eta_min applies to every group alike).
    """
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=o.plateau_factor, patience=o.plateau_patience, min_lr=o.min_lr)
    bases = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lr_factor(o, total_steps, floor=_floor(o, b)) for b in bases])


def refit_schedule(scheduler, o: OptimConfig, total_steps: int, refits: list) -> None:  # noqa: ANN001
    """Give a LambdaLR the schedule of `total_steps` bent by `refits` (see lr_factor); plateau: nothing to do.

    One multiplier per parameter group: LambdaLR zips them with the groups, so a single one would
    silently leave every other group's LR where it was.
    """
    if not is_plateau(scheduler):
        scheduler.lr_lambdas = [lr_factor(o, total_steps, refits, floor=_floor(o, base)) for base in scheduler.base_lrs]


def _floor(o: OptimConfig, base_lr: float) -> float:
    """`optim.min_lr` as a share of a group's base LR (no floor for a group at LR 0)."""
    return min(1.0, o.min_lr / base_lr) if base_lr > 0 else 0.0


def lr_factor(o: OptimConfig, total_steps: int, refits: list = (), floor: float = 0.0) -> Callable[[float], float]:
    """The LR multiplier at each step: linear warmup, then the configured decay over `total_steps`.

    Poly and cosine decay from 1 to `floor` (MMSeg's `(1 - floor) * decay + floor`). Each `(at, steps)`
    in `refits` (a budget's re-plans, in order) fits what is left of the schedule after step `at` into
    a new total of `steps`: the LR is continuous there and the decay still ends at the last step.
    Refitted at the end of the warmup, it is the plain schedule of `steps`.
    """
    factor = _schedule(o, total_steps, floor)
    for at, steps in refits:
        factor, total_steps = _stretched(factor, at, (total_steps - at) / max(steps - at, 1)), steps
    return factor


def _stretched(factor: Callable[[float], float], at: int, scale: float) -> Callable[[float], float]:
    return lambda step: factor(step if step <= at else at + (step - at) * scale)


def _schedule(o: OptimConfig, total_steps: int, floor: float = 0.0) -> Callable[[float], float]:
    def factor(step: float) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        if o.scheduler == "poly":
            return floor + (1 - floor) * (1 - progress) ** o.poly_power
        if o.scheduler == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if o.scheduler == "step":
            return o.gamma ** (step // o.step_size)
        return 1.0

    return factor


def is_plateau(scheduler) -> bool:  # noqa: ANN001
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_criterion(cfg: Config, info: DatasetInfo) -> torch.nn.Module:
    """The loss; class weights by name come from the training splits' pixel statistics. With `model.aux_head`
    the auxiliary head's loss is added, times that weight."""
    from segdist.models.losses import AuxLoss, build_loss

    weights = cfg.loss.class_weights
    if isinstance(weights, str):
        weights = class_weights(info.combined(cfg.data.train_split), weights)
    loss = build_loss(cfg.loss.name, info.num_classes, ignore_index=info.ignore_index, class_weights=weights,
                      focal_gamma=cfg.loss.focal_gamma, focal_alpha=cfg.loss.focal_alpha,
                      dice_weight=cfg.loss.dice_weight)
    return AuxLoss(loss, cfg.model.aux_head) if cfg.model.aux_head > 0 else loss
