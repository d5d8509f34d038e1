"""Fault injection for the reliability tests: `SEGDIST_FAULT=point[@step][#rank]`, unset in normal use.

Points: `loader` (an exception in a training loader worker), `validation`, `checkpoint` (an OSError
while a checkpoint is written), `kill_in_checkpoint` (SIGKILL after the files are written, before
the checkpoint is marked complete), `kill_after_checkpoint` (SIGKILL once the checkpoint is in
place), `sigusr1` (the rank sends itself SIGUSR1, as SLURM's pre-emption notice), `nan_loss` (the loss
becomes NaN), `late_start` (the process counts 30 s more since its start when it plans a budget),
`slow_step` (every training step takes SLOW_STEP_S longer; the budget's calibration steps do not),
`unreadable` (no sample of a training batch can be read), `prepare_stop` (the prepare driver stops, as if
interrupted, once `@step` shard records are in).
`@step` limits it to one optimizer step (or batch, for `loader`), `@step+` to that step and every
later one, `#rank` to one rank. Several faults: separate them with commas.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time

from segdist.utils.console import print_line

_step: int | None = None
SLOW_STEP_S = 0.25


def at_step(step: int) -> None:
    """Tell the injector which optimizer step (or loader batch) the process is at."""
    global _step
    _step = step


def armed(point: str) -> bool:
    """Whether the fault `point` is injected here and now."""
    for spec in filter(None, os.environ.get("SEGDIST_FAULT", "").split(",")):
        name, _, rank = spec.partition("#")
        name, _, step = name.partition("@")
        if name != point:
            continue
        if rank and int(rank) != int(os.environ.get("RANK", "0")):
            continue
        if step and not _at(step):
            continue
        return True
    return False


def _at(step: str) -> bool:
    """Whether the process is at optimizer step `step` ('7'), or at or after it ('7+')."""
    if _step is None:
        return False
    return _step >= int(step.removesuffix("+")) if step.endswith("+") else _step == int(step)


def hit(point: str) -> None:
    """Raise (or kill the process) if the fault `point` is injected here and now."""
    if not armed(point):
        return
    print_line(f"segdist: injected fault '{point}' at step {_step} (SEGDIST_FAULT) at {time.time():.3f}", sys.stderr)
    if point.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "sigusr1":
        os.kill(os.getpid(), signal.SIGUSR1)
        return
    if point == "nan_loss":
        return
    if point == "checkpoint":
        raise OSError(28, f"injected fault at {point}")  # errno 28: no space left on device
    raise RuntimeError(f"injected fault at {point} (SEGDIST_FAULT)")


def pause(point: str, seconds: float) -> None:
    """Sleep `seconds` when the fault `point` is injected here and now (a machine slower than calibrated)."""
    if armed(point):
        time.sleep(seconds)


def loss_value(loss):  # noqa: ANN001, ANN201
    """`loss`, or NaN times it when `nan_loss` is injected at this step."""
    if not armed("nan_loss"):
        return loss
    hit("nan_loss")
    return loss * math.nan
