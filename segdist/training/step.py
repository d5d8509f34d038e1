"""One optimizer step, decided with the other ranks in one all-reduce: step, skip (non-finite) or stop."""

from __future__ import annotations

import time

import torch

from segdist.data.train_loader import SKIP_REASONS
from segdist.distributed import agree, first_reason
from segdist.errors import DataError
from segdist.training import freeze
from segdist.training.optim import is_plateau
from segdist.training.session import Session
from segdist.utils.console import print_line


def optimizer_step(s: Session, loss: torch.Tensor) -> str:
    """Step (or skip a non-finite update); returns 'done', 'signal' (a stop was requested) or 'nonfinite'.

    The same all-reduce sums the mean loss, the stop requests and the unreadable-data counts.
    """
    state = s.state
    skips = [s.pending_skips.get(reason, 0) for reason in SKIP_REASONS]
    mean_loss, nonfinite, stop, retries, failed, *skipped = agree(
        s.accelerator, loss / s.accelerator.num_processes, (~torch.isfinite(loss)).float(),
        float(s.stopper.requested), s.pending_retries, float(s.data_failure is not None), *skips)
    if failed:  # every rank at this same step, so none waits for the others until the collective timeout
        raise DataError(first_reason(s.accelerator, s.data_failure))
    s.pending_skips.clear()
    s.pending_retries = 0
    state["storage_retries"] += int(retries)
    for reason, n in zip(SKIP_REASONS, skipped):
        state["data_skipped"][reason] += int(n)
    state["update"] += 1
    if nonfinite:
        outcome = skip_update(s, int(nonfinite))
        if outcome != "done":
            return outcome
    else:
        apply_update(s)
    if not is_plateau(s.scheduler):
        s.scheduler.step()
    s.last_loss = mean_loss
    s.log_lines.append({"step": state["update"], "loss": mean_loss, "lr": s.optimizer.param_groups[0]["lr"],
                        "time": time.time()})
    return "signal" if stop else "done"


def apply_update(s: Session) -> None:
    """Drop a frozen encoder's gradients, clip, step the optimizer, update the EMA."""
    if s.state["unfreeze_at"] and freeze.is_frozen(s.state["update"] - 1, s.state["unfreeze_at"]):
        freeze.drop_frozen_grads(s.accelerator.unwrap_model(s.model))
    if s.cfg.optim.grad_clip:
        s.accelerator.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update_parameters(s.accelerator.unwrap_model(s.model))
    s.state["nonfinite_in_a_row"] = 0


def skip_update(s: Session, ranks: int) -> str:
    """A non-finite loss on `ranks` rank(s): drop the gradients; 'nonfinite' when the run must stop."""
    state, cfg = s.state, s.cfg
    s.optimizer.zero_grad(set_to_none=True)
    state["nonfinite_skipped"] += 1
    state["nonfinite_in_a_row"] += 1
    where = f"non-finite loss at step {state['update']} (on {ranks} rank(s))"
    if cfg.train.nonfinite == "stop":
        s.say(f"segdist: {where}; stopping (train.nonfinite: skip would skip such updates)")
        return "nonfinite"
    s.say(f"segdist: WARNING: {where}: update skipped "
          f"({state['nonfinite_in_a_row']} in a row, {state['nonfinite_skipped']} in all)")
    if state["nonfinite_in_a_row"] >= cfg.train.max_nonfinite:
        s.say(f"segdist: giving up after {state['nonfinite_in_a_row']} non-finite steps in a row")
        return "nonfinite"
    return "done"


def note_unread(s: Session, unread: dict) -> None:
    """Add what a batch could not read (skips, storage retries, shards given up) to this rank's tally, and
    keep the keys and the count of the samples it decoded."""
    s.step_keys += unread["keys"]
    s.totals["decoded"] += unread["decoded"]
    for reason, n in unread["skipped"].items():
        s.pending_skips[reason] = s.pending_skips.get(reason, 0) + n
    s.pending_retries += unread["retries"]
    s.data_failure = s.data_failure or unread.get("failure")
    for url, why in unread["unavailable"].items():
        if url not in s.unavailable:
            print_line(f"segdist: WARNING: [rank {s.accelerator.process_index}] skipped shard {url}: {why}")
        s.unavailable[url] = why
