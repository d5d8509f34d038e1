"""A wall-clock training budget: how many optimizer steps fit, from a short calibration.

`train.budget: 50m` measures, before training starts, the time of a training step (on throwaway
copies of the model and optimizer, with the real data pipeline and collectives), of validating
one image and of writing a checkpoint, then sets `train.max_steps` to the largest step count whose
training, validations and final checkpoint fit in what is left of the budget. The count is
written into the run's config.yaml, so `--resume` keeps the same schedule.

A few calibration steps misjudge a noisy machine's steady pace (on CamVid, 2 processes on 2 cores:
1.65 s a step where the run then averaged 1.9 s, an 8% overrun), and a shared host can slow down
later in the run. So the run checks its pace: first at the end of the LR warmup but not before
CHECK_AFTER steps (if that falls in the first quarter of the plan), then every tenth of the plan
(at least CHECK_AFTER steps apart) until CHECKS_UNTIL of it. Each check takes the mean step time
since the previous one as the pace, scales the calibrated validation and checkpoint costs by the
same factor, and plans the steps that fit what is left. The LR schedule is refitted, not restarted
(optim.lr_factor): continuous at the check, its decay ending at the new last step. The checks and
their counts are kept in the checkpoints, so a resumed run follows the same schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from segdist.config import parse_duration
from segdist.data.eval_loader import eval_loader
from segdist.data.plan import Origin
from segdist.data.train_loader import train_loader
from segdist.distributed import agree
from segdist.errors import DataError
from segdist.evaluation.metrics import SegmentationMetrics
from segdist.evaluation.scoring import score
from segdist.runs import checkpoints
from segdist.training import precision
from segdist.utils import faults
from segdist.utils.viz import write_overlays


@dataclass(frozen=True)
class Costs:
    """Measured seconds: one optimizer step, validating the whole split once, writing one checkpoint."""
    step: float
    validation: float
    checkpoint: float


@dataclass(frozen=True)
class Check:
    """A budget run's next re-planning: at which optimizer step, how far apart they are, the calibrated costs."""
    at_update: int
    every: int
    costs: Costs


CHECK_AFTER = 20  # optimizer steps: the fewest whose mean step time is taken as the pace
CHECKS_UNTIL = 0.9  # no check in the last tenth of the plan: too few steps left to act on
TIMED_FROM = 3  # the first updates carry the loader's start-up, a one-off cost
PACE_UPDATES = CHECK_AFTER - TIMED_FROM  # timed updates a check needs (a frozen phase's are not timed: a check waits)
MAX_GROWTH = 2  # checks may at most double the planned step count (the loader is opened that far)


@dataclass
class StepClock:
    """Seconds per optimizer update (its data wait included), timed from update TIMED_FROM on."""
    seconds: float = 0.0
    updates: int = 0

    def add(self, update: int, seconds: float) -> None:
        if update > TIMED_FROM:
            self.seconds += seconds
            self.updates += 1

    def mean(self) -> float:
        return self.seconds / max(self.updates, 1)


def steps_that_fit(seconds: float, costs: Costs, *, per_epoch_updates: float, val_every: int,
                   checkpoint_every: int, done: int = 0) -> int:
    """The largest step count n >= done whose steps done+1..n, validations and checkpoints take at most `seconds`.

    Validation runs every `val_every` epochs and at the end; a checkpoint every `checkpoint_every`
    steps (or every epoch when 0), at every epoch end that validates, and at the end.
    """
    def periodic(n: int) -> tuple[int, int]:  # validations and checkpoints during steps 1..n, the final ones apart
        validations = math.floor(n / per_epoch_updates / val_every)
        return validations, math.floor(n / (checkpoint_every or per_epoch_updates)) + validations

    def cost(n: int) -> float:  # the end adds a validation, its checkpoint and the final one
        (v1, c1), (v0, c0) = periodic(n), periodic(done)
        return (n - done) * costs.step + (v1 - v0 + 1) * costs.validation + (c1 - c0 + 2) * costs.checkpoint

    lo, hi = done, done + max(1, int(seconds / max(costs.step, 1e-9)) + 1)
    while lo < hi:  # cost(n) grows with n: binary search for the last n that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid - 1)
    return lo


def calibrate(s, steps: int = 6, warmup: int = 2) -> Costs:  # noqa: ANN001 - a train.session.Session
    """Measure a step, a validation and a checkpoint on this job, leaving its weights and RNG untouched.

    With `train.mixed_precision: auto` the step is timed in each candidate precision and the faster chosen.
    """
    accelerator = s.accelerator
    folder = s.run_dir / ".calibrate.tmp"  # overlays and a checkpoint written for their time only
    with untouched(s):
        step = _step_seconds(s, steps, warmup)
        checkpoint = _checkpoint_cost(s, folder)  # before the restore: with the optimizer's moments, as in training
    validation = _validation_cost(s, folder)
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
    world = accelerator.num_processes
    return Costs(*(v / world for v in agree(accelerator, step, validation, checkpoint)))


def choose_precision(s, steps: int = 6, warmup: int = 2) -> None:  # noqa: ANN001 - a train.session.Session
    """`train.mixed_precision: auto` without a budget's calibration: time the candidates alone, use the faster."""
    with untouched(s):
        _step_seconds(s, steps, warmup)


@contextmanager
def untouched(s) -> Iterator[None]:  # noqa: ANN001 - a train.session.Session
    """Whatever steps run inside, the model's weights, the optimizer's state and the RNGs are put back after."""
    model = s.accelerator.unwrap_model(s.model)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(s.optimizer.state_dict()),
             torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    weights, optimizer_state, torch_rng, numpy_rng, python_rng = saved
    model.load_state_dict(weights)
    s.optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(torch_rng), np.random.set_state(numpy_rng), random.setstate(python_rng)


def _step_seconds(s, steps: int, warmup: int) -> float:  # noqa: ANN001
    """This rank's seconds per optimizer step; under `auto` the ranks' mean in the precision it chose."""
    if s.cfg.train.mixed_precision != precision.AUTO:
        return _timed_steps(s, steps, warmup)
    seconds = precision.choose(s, lambda name: _timed_steps(s, steps, warmup, name))
    return seconds[s.cfg.train.mixed_precision]


def _timed_steps(s, steps: int, warmup: int, autocast: str | None = None) -> float:  # noqa: ANN001
    """Seconds per optimizer step over `steps` steps after `warmup`, on batches the run will not train on.

    `autocast`: the session's forward runs in this precision meanwhile (training.precision's candidates).
    """
    accelerator, cfg = s.accelerator, s.cfg
    kept = s.autocast_precision
    s.autocast_precision = autocast or kept
    batches = (steps + warmup) * cfg.optim.accumulate
    plan = dataclasses.replace(s.plan, seed=s.plan.seed + 7919, origin=Origin(), _orders={})  # not the run's samples
    loader = train_loader(cfg.data, s.info, plan, rank=accelerator.process_index, start=0, end=batches)
    with loader:
        for i, (images, labels, _) in enumerate(loader):
            if i == warmup * cfg.optim.accumulate:
                agree(accelerator, 0.0)  # all ranks start the clock together
                start = time.perf_counter()
            with accelerator.accumulate(s.model):
                logits = s.forward(s.normalize(images.to(accelerator.device)))
                loss = s.criterion(logits, labels.to(accelerator.device).long())
                accelerator.backward(loss)
            if accelerator.sync_gradients:
                agree(accelerator, loss.detach())  # what the real loop syncs per update
                s.optimizer.step()
                s.optimizer.zero_grad(set_to_none=True)
    s.autocast_precision = kept
    return (time.perf_counter() - start) / steps


def _validation_cost(s, folder, batches: int = 3) -> float:  # noqa: ANN001
    """Seconds for a whole validation: the first few batches of this rank's share, extrapolated, and its figures."""
    accelerator, cfg = s.accelerator, s.cfg
    net = accelerator.unwrap_model(s.model).eval()
    metrics = SegmentationMetrics(s.info.num_classes, s.info.ignore_index).to(accelerator.device)
    start = time.perf_counter()
    with eval_loader(cfg.data, s.info, cfg.data.val_split, rank=accelerator.process_index,
                     world_size=accelerator.num_processes, size=cfg.data.val_size) as loader:
        scored = score(net, itertools.islice(loader, batches), s.normalize, metrics, device=accelerator.device,
                       precision=cfg.train.mixed_precision, keep_examples=cfg.train.log_images if s.main else 0)
    net.train()
    share = math.ceil(s.info.split(cfg.data.val_split)["samples"] / accelerator.num_processes)
    scoring = (time.perf_counter() - start) / max(scored.samples, 1) * share
    start = time.perf_counter()
    if s.main:  # the overlay panels every validation renders and writes
        write_overlays(scored.examples, s.info.palette, s.info.ignore_index, folder / "val_overlays")
    return scoring + time.perf_counter() - start


def _checkpoint_cost(s, folder) -> float:  # noqa: ANN001
    """Seconds to write one complete step checkpoint, through the same code as training's."""
    start = time.perf_counter()
    checkpoints.nonfinite_weights(s.accelerator.unwrap_model(s.model))
    checkpoints.save_training_state(s.accelerator, folder, s.state, s.model, s.optimizer, s.scheduler, s.ema)
    agree(s.accelerator, 0.0)
    return time.perf_counter() - start


def seconds_left(s) -> float:  # noqa: ANN001 - a train.session.Session
    """What is left of `train.budget`, by rank 0's clock on every rank.

    Processes start at different times (nodes, containers): planning from their own clocks, ranks
    would choose different step counts and meet different collectives at the end.
    """
    elapsed = time.time() - s.started + (30.0 if faults.armed("late_start") else 0.0)
    return parse_duration(s.cfg.train.budget) - agree(s.accelerator, elapsed if s.main else 0.0)[0]


def fitting_steps(s, seconds: float, costs: Costs, done: int = 0) -> int:  # noqa: ANN001
    """steps_that_fit with this run's epoch length, validation and checkpoint cadence, 3% held back for the tail."""
    cfg = s.cfg
    return steps_that_fit(0.97 * seconds, costs, per_epoch_updates=s.per_epoch / cfg.optim.accumulate,
                          val_every=cfg.train.val_every, checkpoint_every=cfg.train.checkpoint_every, done=done)


def planned_steps(s) -> int:  # noqa: ANN001 - a train.session.Session
    """train.max_steps, else the count a budget chose (kept in the checkpoints), else epochs x steps per epoch."""
    cfg = s.cfg
    saved = json.loads((s.resume_from / checkpoints.STATE_FILE).read_text()) if s.resume_from is not None else None
    calibrating = cfg.train.budget and not cfg.train.max_steps and saved is None  # plan_steps chooses the precision
    if cfg.train.mixed_precision == precision.AUTO and not calibrating:
        if saved is not None and saved.get("precision"):
            precision.use(s, saved["precision"])  # a resumed run goes on in the precision it chose
        else:
            choose_precision(s)
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if cfg.train.budget:
        return saved["max_steps"] if saved is not None else plan_steps(s)
    return cfg.train.epochs * s.per_epoch // cfg.optim.accumulate


def plan_steps(s) -> int:  # noqa: ANN001
    """Calibrate, then the optimizer steps that fit in what is left of `train.budget`; says what it chose.

    Also sets `s.budget_check`, the step at which `replan` compares the plan with the measured pace.
    """
    cfg = s.cfg
    budget = parse_duration(cfg.train.budget)
    costs = calibrate(s)
    left = seconds_left(s)
    per_epoch_updates = s.per_epoch / cfg.optim.accumulate
    steps = fitting_steps(s, left, costs)
    if steps < 1:
        raise DataError(f"train.budget {cfg.train.budget}: {left:.0f} s left after calibration is not enough for one "
                        f"step ({costs.step:.2f} s), a validation ({costs.validation:.1f} s) and a checkpoint "
                        f"({costs.checkpoint:.1f} s)")
    s.say(f"budget {cfg.train.budget} ({budget:.0f} s, {left:.0f} s left after calibration): a step takes "
          f"{costs.step:.3f} s, a validation {costs.validation:.1f} s, a checkpoint {costs.checkpoint:.2f} s -> "
          f"{steps} optimizer steps ({steps / per_epoch_updates:.1f} epochs); train.max_steps={steps} is written "
          f"into the run's config.yaml")
    check_at = max(cfg.optim.warmup_steps, CHECK_AFTER)
    s.budget_check = Check(check_at, max(CHECK_AFTER, steps // 10), costs) if check_at <= steps // 4 else None
    return steps


def replan(s) -> int | None:  # noqa: ANN001 - a train.session.Session
    """At `s.budget_check`: the steps that fit what is left at the pace since the last check, or None if unchanged.

    Every rank takes the mean of the ranks' measured step times, so all choose the same count and
    the same next check.
    """
    check, world, state = s.budget_check, s.accelerator.num_processes, s.state
    step = agree(s.accelerator, s.step_clock.mean())[0] / world
    s.step_clock = StepClock()
    pace = step / check.costs.step  # the host's speed now against the calibration's, for every kind of work
    costs = Costs(step, check.costs.validation * pace, check.costs.checkpoint * pace)
    done, was = state["update"], state["max_steps"]
    steps = min(max(fitting_steps(s, seconds_left(s), costs, done), done + 1), MAX_GROWTH * state["planned_steps"])
    following = done + check.every
    s.budget_check = Check(following, check.every, check.costs) if following <= CHECKS_UNTIL * steps else None
    s.say(f"\nbudget check at step {done}: a step took {step:.3f} s (calibration: {check.costs.step:.3f} s) -> "
          f"{'keeps' if steps == was else f'was {was}, now'} {steps} optimizer steps")
    return None if steps == was else steps
