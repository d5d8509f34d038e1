"""Exponential moving average of the weights and BatchNorm buffers (torch's AveragedModel).

ema = decay * ema + (1 - decay) * weights after every optimizer step, the first step copying the
weights. When `train.ema_decay` is set, validation, the best checkpoint, evaluate, predict and
export use the average; checkpoints save it as `ema.safetensors` and `--resume` restores it.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: torch.nn.Module, decay: float | None) -> AveragedModel | None:
    """An EMA of `model` (an unwrapped module), or None when `decay` is None."""
    if decay is None:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    # accelerate's mixed precision sets an instance `forward` wrapping the ORIGINAL module's method;
    # the deep copy would keep calling the original: fall back to the class's forward.
    ema.module.__dict__.pop("forward", None)
    ema.module.__dict__.pop("_original_forward", None)
    return ema


def model_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EMA checkpoint's state dict as the plain model's (no `module.` prefix, no step counter)."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k != "n_averaged"}
