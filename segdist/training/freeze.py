"""A frozen encoder (`model.freeze_encoder`): for the whole run or its first steps, with its BatchNorm statistics kept.

Frozen means bit-identical: no gradient (requires_grad off, which also saves its backward), its
BatchNorm and dropout in eval mode (running statistics do not move), and no optimizer update (its
gradients are dropped before the step, so AdamW neither decays nor moves its moments).

A whole-run freeze is set before the model is wrapped for DDP, which then never sees those
parameters. A freeze for the first N steps keeps them registered with DDP (they need gradients
after step N) and asks DDP to expect parameters without gradients (find_unused_parameters); DDP
may then hand them zero gradients, which drop_frozen_grads removes.
"""

from __future__ import annotations

from torch import nn

from segdist.errors import ConfigError

WHOLE_RUN = -1  # unfreeze_step's value for an encoder that never trains


def unfreeze_step(setting: bool | int | float, planned_steps: int) -> int:
    """The optimizer step from which the encoder trains: 0 (never frozen), N, a share of the plan, or WHOLE_RUN."""
    if isinstance(setting, bool):
        return WHOLE_RUN if setting else 0
    if isinstance(setting, float) and setting < 1:
        return max(1, round(setting * planned_steps))
    return int(setting)


def frozen_for_a_while(setting: bool | int | float) -> bool:
    """A freeze that ends during the run (DDP must then expect parameters without gradients)."""
    return not isinstance(setting, bool) and setting > 0


def is_frozen(update: int, unfreeze_at: int) -> bool:
    return unfreeze_at == WHOLE_RUN or update < unfreeze_at


def timed_as_calibrated(update: int, unfreeze_at: int) -> bool:
    """Whether 0-based `update` costs what a budget's calibration measured: a freeze that ends later
    is not in force at calibration, and its steps (no encoder backward) are faster than the plan's."""
    return unfreeze_at == WHOLE_RUN or update >= unfreeze_at


def encoder_of(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        parts = ", ".join(name for name, _ in model.named_children())
        raise ConfigError(f"model.freeze_encoder: the model has no encoder to freeze (its parts: {parts})")
    return encoder


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or release `model`'s encoder (an unwrapped module); the rest keeps its train/eval mode."""
    encoder = encoder_of(model)
    for parameter in encoder.parameters():
        parameter.requires_grad_(not frozen)
    encoder.train(model.training and not frozen)


def drop_frozen_grads(model: nn.Module) -> None:
    """Remove the encoder's gradients before an optimizer step, so a frozen encoder is not updated at all."""
    for parameter in encoder_of(model).parameters():
        parameter.grad = None
