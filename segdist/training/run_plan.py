"""The run's training plan from its config and, on `--resume`, its checkpoint.

The order (data/plan.py), the global batch's shape on this job's processes, and the nodes that
read disjoint shards (remote data). A resumed run keeps the checkpoint's order and, where it can,
its global batch (`resumed_shape`); with another one it goes on from its place in the epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segdist import storage
from segdist.config import Config
from segdist.data.info import DatasetInfo
from segdist.data.plan import Origin, Shape, TrainPlan, fit_shape, plan_for
from segdist.errors import DataError
from segdist.runs import checkpoints


def training_plan(cfg: Config, info: DatasetInfo, resume_from: Path | None) -> TrainPlan:
    """The order and the global batch's shape on this job's processes, written into `cfg`.

    A resumed run keeps the checkpoint's order; see `resumed_shape` for its global batch.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    saved = saved_state(resume_from) if resume_from is not None else {}
    shape = Shape(cfg.data.batch_size, world, cfg.optim.accumulate)
    if "global_batch" in saved.get("order", {}):
        shape = resumed_shape(cfg, world, saved)
    cfg.data.batch_size, cfg.optim.accumulate = shape.batch, shape.accumulate
    nodes = 1 if storage.is_local(info.root) else node_count()  # remote shards: each node reads its own
    plan = plan_for(cfg.data, info, cfg.train.seed, shape, saved.get("order"), saved.get("update", 0), nodes)
    cfg.data.lanes, cfg.data.shuffle_window, cfg.data.chunk = plan.lanes, plan.window, plan.chunk  # into config.yaml
    if plan.origin != plan_origin(saved):
        say_once(f"segdist: continuing at sample {plan.origin.sample} of epoch {plan.origin.epoch} with global "
                 f"batches of {shape.global_batch}; the rest of that epoch's order that fills no whole batch is "
                 "skipped")
    return plan


def resumed_shape(cfg: Config, world: int, saved: dict) -> Shape:
    """A resumed run's shape: the configured one where data.batch_size or optim.accumulate differs from
    what the checkpoint's run asked for (an explicit change); else one that keeps the checkpoint's global
    batch on `world` processes (fit_shape), or, where none can, the configured one. A change is said once."""
    was = saved["order"]["global_batch"]
    asked = saved.get("asked") or {"batch": saved["shape"]["batch"], "accumulate": saved["shape"]["accumulate"]}
    configured = Shape(cfg.data.batch_size, world, cfg.optim.accumulate)
    if (configured.batch, configured.accumulate) != (asked["batch"], asked["accumulate"]):
        if configured.global_batch != was:
            say_once(f"segdist: resuming with data.batch_size {configured.batch} and optim.accumulate "
                     f"{configured.accumulate} as configured (the run asked for {asked['batch']} and "
                     f"{asked['accumulate']}): the global batch changes from {was} to "
                     f"{configured.global_batch} samples")
        return configured
    try:
        shape, change = fit_shape(was, cfg.data.batch_size, cfg.optim.accumulate, world)
    except DataError:
        say_once(f"segdist: {world} process(es) cannot keep the run's global batch of {was} samples with "
                 f"data.batch_size <= {cfg.data.batch_size}: resuming with {configured.batch} x {world} process(es) "
                 f"x {configured.accumulate} (optim.accumulate) = {configured.global_batch} samples a batch")
        return configured
    if change:
        say_once(f"segdist: resuming a global batch of {was} samples on {world} process(es): {change}")
    return shape


def node_count() -> int:
    """Nodes of the job: processes over processes per node (torchrun's LOCAL_WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world // int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def plan_origin(saved: dict) -> Origin:
    return Origin(**saved.get("order", {}).get("origin", {}))


def say_once(line: str) -> None:
    """Print on the job's first process only (before the process group exists)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def saved_state(checkpoint: Path) -> dict:
    """The loop state a checkpoint holds (segdist_state.json)."""
    return json.loads((checkpoint / checkpoints.STATE_FILE).read_text())
