"""`segdist train`: one config, from one CPU process to many GPU nodes (accelerate + DDP).

The loop, as torchvision's references/segmentation/train.py lays it out; each function takes the
session and can be called on its own:

    s = setup(cfg, resume)                     # session.py: process group, data, model, optimizer
    start(s, planned_steps(s))                 # budget.py: the step count; session.py: schedule, --resume
    batches = iter(train_loader(...))          # data/train_loader.py: this rank's batches from s.state["batch"]
    while s.state["batch"] < s.total_batches:
        train_one_epoch(s, batches, bar)       # forward, backward, optimizer_step (step.py) per update;
                                               #   logs (logbook.py), budget checks, step checkpoints
        end_of_epoch(s)                        # validation.evaluate, plateau LR, best model, checkpoint
    finish(s, stop)                            # logbook.py: summary.json, one line per rank

A stop signal (SLURM pre-emption) checkpoints every rank at the same step and returns; `--resume`
continues there.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import closing, nullcontext

import torch
from tqdm import tqdm

from segdist.config import Config, save_config
from segdist.data.prefetch import node_prefetcher
from segdist.data.tar_reader import Reader
from segdist.data.train_loader import train_loader
from segdist.errors import CheckpointError
from segdist.runs import checkpoints
from segdist.training import freeze
from segdist.training.budget import MAX_GROWTH, PACE_UPDATES, planned_steps, replan
from segdist.training.logbook import finish, flush_log, log_interval
from segdist.training.optim import is_plateau, refit_schedule
from segdist.training.session import Session, setup, start
from segdist.training.step import note_unread, optimizer_step
from segdist.training.validation import evaluate
from segdist.utils import faults


def main(cfg: Config, resume: str | None = None, overwrite: bool = False, resume_inexact: bool = False) -> dict:
    """Train as configured; returns the final summary (also written to summary.json)."""
    s = setup(cfg, resume, started=time.time(), overwrite=overwrite, resume_inexact=resume_inexact)
    start(s, planned_steps(s))
    stop = "done"
    # a budget check may raise the step count: the stream reaches that far (its order does not depend on its end)
    end = s.total_batches * (MAX_GROWTH if s.budget_check else 1)
    loader = train_loader(cfg.data, s.info, s.plan, rank=s.accelerator.process_index, start=s.state["batch"], end=end,
                          stages=s.state.get("resize_stages"))
    s.prefetcher = node_prefetcher(s.plan, Reader.from_config(cfg.data, s.info.digests()),
                                   s.accelerator.process_index, s.accelerator.local_process_index, s.state["update"])
    bar = tqdm(total=s.total_batches, initial=s.state["batch"], disable=not s.main, desc="train", dynamic_ncols=True)
    with loader, bar, closing(s.prefetcher) if s.prefetcher else nullcontext():  # closed on every path
        batches = iter(loader)
        while True:
            if epoch_end_due(s):
                stop = end_of_epoch(s)
            if stop != "done" or s.state["batch"] >= s.total_batches:
                break
            stop = train_one_epoch(s, batches, bar)
            if stop == "signal":
                save_checkpoint(s)  # every rank stops at the same step; a requeued job resumes here
            if stop != "done":
                break
    return finish(s, stop)


def epoch_end_due(s: Session) -> bool:
    """At an epoch boundary (or the last batch) whose validation and bookkeeping have not run yet.

    True after a resume from a checkpoint written on an epoch's last batch before its end (a stop
    signal there), so the resumed run validates exactly where the uninterrupted one did.
    """
    batch, accumulate = s.state["batch"], s.plan.shape.accumulate
    ends_epoch = batch % accumulate == 0 and s.plan.is_epoch_end(batch // accumulate)
    return batch > 0 and (ends_epoch or batch >= s.total_batches) and s.state["validated_at"] != batch


def train_one_epoch(s: Session, batches, bar: tqdm) -> str:  # noqa: ANN001
    """Step until the epoch (or the run) ends; returns 'done', 'signal' or 'nonfinite'."""
    accelerator, state = s.accelerator, s.state
    accumulate = s.plan.shape.accumulate
    boundary = s.plan.next_epoch_end(state["batch"] // accumulate) * accumulate
    s.model.train()
    pending_loss, micro = torch.zeros((), device=accelerator.device), 0
    while state["batch"] < (epoch_end := min(boundary, s.total_batches)):  # a budget check may move the end
        waited = time.perf_counter()
        if micro == 0:
            update_began = waited
            hold_freeze(s)
        images, labels, read = next(batches)
        s.interval.waited += time.perf_counter() - waited
        note_unread(s, read)
        pending_loss += forward_backward(s, images, labels)
        micro += 1
        state["batch"] += 1
        s.interval.images += images.shape[0]
        bar.update(1)
        if not accelerator.sync_gradients:
            continue
        outcome = optimizer_step(s, pending_loss / micro)
        record_samples(s)
        pending_loss, micro = torch.zeros((), device=accelerator.device), 0
        if freeze.timed_as_calibrated(state["update"] - 1, state["unfreeze_at"]):
            s.step_clock.add(state["update"], time.perf_counter() - update_began)
        if outcome != "done":
            return outcome
        after_update(s, bar, epoch_end)
    return "done"


def hold_freeze(s: Session) -> None:
    """`model.freeze_encoder` at the coming step: frozen before `unfreeze_at` (BatchNorm in eval mode
    again after every model.train()), released at it, said once."""
    at = s.state["unfreeze_at"]
    if at == 0:
        return
    freeze.set_frozen(s.accelerator.unwrap_model(s.model), freeze.is_frozen(s.state["update"], at))
    if s.state["update"] == at:
        s.say(f"segdist: the encoder trains from step {at} on (model.freeze_encoder)")


def forward_backward(s: Session, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One micro-batch: normalise on the device, forward, loss, backward (accumulated); returns the loss."""
    accelerator = s.accelerator
    images = s.normalize(images.to(accelerator.device, non_blocking=True))
    labels = labels.to(accelerator.device, non_blocking=True).long()
    if s.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with accelerator.accumulate(s.model):
        faults.at_step(s.state["update"] + 1)
        faults.hit("sigusr1")
        faults.pause("slow_step", faults.SLOW_STEP_S)
        loss = faults.loss_value(s.criterion(s.forward(images), labels))
        accelerator.backward(loss)
    return loss.detach()


def record_samples(s: Session) -> None:
    """`train.record_samples`: append this rank's keys of the update to samples.jsonl (one write per line)."""
    keys, s.step_keys = s.step_keys, []
    if not s.cfg.train.record_samples:
        return
    update = s.state["update"]
    line = json.dumps({"step": update, "epoch": s.plan.where(update - 1)[0],
                       "rank": s.accelerator.process_index, "keys": keys}) + "\n"
    with open(s.run_dir / "samples.jsonl", "a") as f:  # O_APPEND: every rank's lines stay whole
        f.write(line)


def after_update(s: Session, bar: tqdm, epoch_end: int) -> None:
    """The periodic work after an optimizer step: log lines, the budget's check, a step checkpoint."""
    update, cfg = s.state["update"], s.cfg
    if s.prefetcher is not None:
        s.prefetcher.advance(update)
    if update % cfg.train.log_every == 0:
        log_interval(s, bar)
    if s.budget_check and update >= s.budget_check.at_update and s.step_clock.updates >= PACE_UPDATES:
        check_budget(s, bar)
    every = cfg.train.checkpoint_every
    if every and update % every == 0 and s.state["batch"] < epoch_end:
        save_checkpoint(s)  # at an epoch's end the checkpoint follows its validation instead


def check_budget(s: Session, bar: tqdm) -> None:
    """A budget's re-planning (budget.replan): a new step count, a refitted schedule, config.yaml."""
    steps = replan(s)
    if steps is None:
        return
    s.state["replans"].append([s.state["update"], steps])
    s.state["max_steps"] = s.cfg.train.max_steps = steps
    s.total_batches = steps * s.cfg.optim.accumulate
    refit_schedule(s.scheduler, s.cfg.optim, s.state["planned_steps"], s.state["replans"])
    if s.main:
        save_config(s.cfg, s.run_dir / "config.yaml")
    bar.total = s.total_batches
    bar.refresh()


def end_of_epoch(s: Session) -> str:
    """Validate (every val_every epochs and at the end), step the plateau scheduler, keep the best, checkpoint."""
    cfg, state = s.cfg, s.state
    finished = state["batch"] >= s.total_batches
    state["epoch"] = s.plan.epochs_begun(math.ceil(state["batch"] / s.plan.shape.accumulate))
    stop = "done"
    if state["epoch"] % cfg.train.val_every == 0 or finished:
        stop = validate_and_keep_best(s)
    state["validated_at"] = state["batch"]
    every = cfg.train.checkpoint_every
    if not every or state["update"] % every == 0 or finished or stop != "done":
        save_checkpoint(s)
    return stop


def validate_and_keep_best(s: Session) -> str:
    """Validate, step the plateau scheduler, save the best model; 'early_stop' when patience ran out."""
    cfg, state = s.cfg, s.state
    metrics = evaluate(s)
    state["last_miou"] = metrics["miou"]
    if is_plateau(s.scheduler):
        s.scheduler.step(metrics["miou"])
    if metrics["miou"] > state["best_miou"]:
        state["best_miou"], state["best_step"], state["stale"] = metrics["miou"], state["update"], 0
        checkpoints.save_best(s.accelerator, s.run_dir, {**state, "validated_at": state["batch"]}, s.model, s.ema)
    else:
        state["stale"] += 1
    s.say(f"epoch {state['epoch']} step {state['update']}: val mIoU {metrics['miou']:.4f} "
          f"(best {state['best_miou']:.4f} at step {state['best_step']})")
    if cfg.train.early_stop_patience and state["stale"] >= cfg.train.early_stop_patience:
        return "early_stop"
    return "done"


def save_checkpoint(s: Session) -> None:
    """A complete step checkpoint of the current state (skipped when this step already has one)."""
    flush_log(s)
    final = s.run_dir / "checkpoints" / checkpoints.step_name(s.state["update"])
    if not checkpoints.missing_files(final) and json.loads((final / checkpoints.STATE_FILE).read_text()) == s.state:
        return
    bad = checkpoints.nonfinite_weights(s.accelerator.unwrap_model(s.model))
    if bad:
        raise CheckpointError(f"refusing to checkpoint non-finite weights ({bad[:3]}) at step {s.state['update']}")
    checkpoints.save_training_state(s.accelerator, s.run_dir, s.state, s.model, s.optimizer, s.scheduler, s.ema)
    faults.hit("kill_after_checkpoint")
    if s.main:
        checkpoints.prune(s.run_dir, s.cfg.train.keep_last)
