"""`train.mixed_precision: auto`: the faster of fp32 and bf16 autocast, timed on this job.

bf16 autocast pays only where the hardware computes in bf16 (CPUs with AVX512_BF16 or AMX, CUDA
GPUs from Ampere on); elsewhere oneDNN emulates it and a step is slower than in fp32. Rather than
guessing from CPU flags, an `auto` run times a few training steps in each candidate precision on
its own model, data and collectives (the budget's calibration does it; a run without a budget
times them alone), every rank takes the ranks' mean, and the faster one is used and recorded as
the run's `train.mixed_precision`, so evaluation, predict and a resume use the same.

The accelerator of an `auto` run is made in fp32, and the session autocasts the forward itself
(Session.forward), as accelerate does: weights and the optimizer stay fp32, logits come back fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from segdist.distributed import agree

AUTO = "auto"


def candidates(device: torch.device) -> tuple[str, ...]:
    """The precisions `auto` chooses from on `device`: fp32 ("no") and bf16 where autocast supports it."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return ("no",)
    return ("no", "bf16")


def choose(s, seconds_per_step: Callable[[str], float]) -> dict[str, float]:  # noqa: ANN001 - a Session
    """Time every candidate with `seconds_per_step(precision)`, use the fastest; {precision: seconds} (rank mean)."""
    names = candidates(s.accelerator.device)
    measured = [seconds_per_step(name) for name in names]
    world = s.accelerator.num_processes
    seconds = {name: total / world for name, total in zip(names, agree(s.accelerator, *measured))}
    use(s, min(seconds, key=seconds.get))
    s.say("train.mixed_precision auto: a step takes " + ", ".join(
        f"{t:.3f} s in {'fp32' if name == 'no' else name}" for name, t in seconds.items())
        + f" -> {s.cfg.train.mixed_precision}")
    return seconds


def use(s, precision: str) -> None:  # noqa: ANN001 - a Session
    """Run the session's forward in `precision` and record it as the run's `train.mixed_precision`."""
    s.autocast_precision = precision
    s.cfg.train.mixed_precision = precision
