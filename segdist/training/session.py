"""A training job's session: the process group, run directory, data, model, optimizer and resume point.

`setup()` builds everything the step count does not decide; `start()` takes the step count
(segdist.training.budget.planned_steps) and builds the LR schedule, writes config.yaml and, on
`--resume`, restores the checkpoint. `Session.state` is what checkpoints save.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segdist.config import Config, save_config
from segdist.data import stages
from segdist.data.augment import Normalizer
from segdist.data.info import DatasetInfo, load_dataset_info, normalization
from segdist.data.plan import TrainPlan, carried_end, saved_plan
from segdist.data.train_loader import SKIP_REASONS
from segdist.distributed import make_accelerator, sync_batchnorm
from segdist.errors import CheckpointError, ConfigError, DataError
from segdist.runs import checkpoints
from segdist.runs.ema import make_ema
from segdist.runs.init_from import init_from
from segdist.training import freeze, precision, trackers
from segdist.training.budget import Check, StepClock
from segdist.training.logbook import Interval, truncate_log
from segdist.training.optim import build_criterion, build_optimizer, build_scheduler, refit_schedule
from segdist.training.run_plan import saved_state, training_plan
from segdist.utils.files import write_json_atomic
from segdist.utils.secrets import redact


class StopRequested:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) set a flag; the ranks agree to checkpoint and exit."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001
        self.requested = True


@dataclass
class Session:
    """Everything a running training job holds; `state` is what its checkpoints save."""

    cfg: Config
    info: DatasetInfo
    accelerator: Any
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    normalize: Normalizer
    ema: Any
    plan: TrainPlan  # the sample order and the global batch's shape (data/plan.py)
    resume_from: Path | None  # the checkpoint `--resume` continues from
    channels_last: bool  # the model and its inputs are channels-last (models.use_channels_last)
    started: float  # when the job started (time.time()), for the budget
    state: dict = field(default_factory=lambda: new_state())
    scheduler: Any = None  # built by start() once the step count is known
    total_batches: int = 0
    stopper: StopRequested = field(default_factory=StopRequested)
    log_lines: list = field(default_factory=list)
    last_loss: float = math.nan
    pending_skips: dict = field(default_factory=dict)  # this rank's unreadable data since the last update
    pending_retries: int = 0  # this rank's storage retries since the last update
    data_failure: str | None = None  # why this rank's loader cannot go on (raised on every rank at the next update)
    unavailable: dict = field(default_factory=dict)  # shard URL -> why it could not be read (this rank)
    interval: Interval = field(default_factory=Interval)
    totals: dict = field(default_factory=lambda: {"waited": 0.0, "elapsed": 0.0, "images": 0, "decoded": 0})
    warned_data_bound: bool = False
    step_clock: StepClock = field(default_factory=StepClock)
    budget_check: Check | None = None  # when a budget run next re-plans its step count (budget.replan)
    step_keys: list = field(default_factory=list)  # sample keys of this rank's micro-batches since the last update
    resume_inexact: bool = False  # --resume-inexact: go on when the checkpoint's RNG states cannot be restored
    asked: dict = field(default_factory=dict)  # the configured batch_size and accumulate (before a resume fits them)
    prefetcher: Any = None  # the node's shard prefetcher (data/prefetch.py) on a node's first process
    autocast_precision: str = "no"  # train.mixed_precision auto's choice: autocast here (the accelerator runs fp32)

    def forward(self, images: torch.Tensor) -> Any:
        """The model's training forward; in `autocast_precision` (logits back in fp32) when `auto` chose one."""
        if self.autocast_precision == "no":
            return self.model(images)  # the accelerator autocasts in the precision it was made with
        from accelerate.utils import convert_to_fp32

        from segdist.models.inference import autocast

        with autocast(self.accelerator.device, self.autocast_precision):
            return convert_to_fp32(self.model(images))

    @property
    def per_epoch(self) -> int:
        """Micro-batches per epoch and process."""
        return self.plan.batches_per_epoch

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, *args, **kwargs) -> None:
        """Print once for the whole job (accelerator.print prints once per node)."""
        if self.main:
            print(*args, **kwargs, flush=True)


def new_state() -> dict:
    return {"batch": 0, "update": 0, "epoch": 0, "validated_at": 0, "best_miou": -1.0, "best_step": None,
            "stale": 0, "last_miou": None, "nonfinite_skipped": 0, "nonfinite_in_a_row": 0,
            "data_skipped": dict.fromkeys(SKIP_REASONS, 0), "storage_retries": 0,  # summed over all ranks
            "replans": [],  # a budget's [step, new step count] pairs, which bend the LR schedule
            "unfreeze_at": 0}  # the step from which the encoder trains (training.freeze.unfreeze_step)


def setup(cfg: Config, resume: str | None, started: float | None = None, overwrite: bool = False,
          resume_inexact: bool = False) -> Session:
    """Process group, run directory, data, model, optimizer and the checkpoint to resume from.

    `overwrite` deletes an earlier run's directory of the same name (after every check, before any write).
    `resume_inexact`: a checkpoint whose RNG states cannot be restored is resumed anyway (said once).
    """
    if resume_inexact and resume is None:
        raise ConfigError("--resume-inexact applies to a resume: add --resume or --resume-from")
    from accelerate.utils import set_seed

    from segdist.models import use_channels_last

    info = load_dataset_info(cfg.data.shards)
    info.shards(cfg.data.train_split), info.shards(cfg.data.val_split)  # fail now if a split is missing
    run_dir = Path(cfg.train.runs_dir) / cfg.train.name
    check_run_dir(cfg, run_dir, resume, overwrite)  # every rank, before anything is written
    resume_from = checkpoints.find_resume(run_dir, resume)
    asked = {"batch": cfg.data.batch_size, "accumulate": cfg.optim.accumulate}
    plan = training_plan(cfg, info, resume_from)  # before anything is written: a resume it cannot continue stops here
    auto = cfg.train.mixed_precision == precision.AUTO  # chosen by timing (training.precision), autocast here
    accelerator = make_accelerator(mixed_precision="no" if auto else cfg.train.mixed_precision,
                                   accumulate=cfg.optim.accumulate,
                                   timeout_s=cfg.train.collective_timeout,
                                   trackers=trackers.trackers_for(cfg, run_dir), project_dir=run_dir,
                                   unused_parameters=freeze.frozen_for_a_while(cfg.model.freeze_encoder))
    if not auto:
        cfg.train.mixed_precision = accelerator.mixed_precision  # in effect (the launcher's or the recipe's): recorded
    if accelerator.num_processes != plan.shape.processes:
        raise DataError(f"the launcher set WORLD_SIZE={plan.shape.processes} but the process group has "
                        f"{accelerator.num_processes} processes")
    if accelerator.is_main_process:
        if overwrite and run_dir.exists():
            print(f"segdist: --overwrite: deleting the earlier run {run_dir}", flush=True)
            shutil.rmtree(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        checkpoints.remove_partial(run_dir)
        write_json_atomic(run_dir / "dataset.json", info.manifest)
    accelerator.wait_for_everyone()

    set_seed(cfg.train.seed)  # the same initial weights on every rank
    model = initial_model(cfg, info, accelerator, run_dir, resumed=resume_from is not None)
    channels_last = use_channels_last(cfg.model.channels_last, accelerator.device, cfg.train.mixed_precision)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model, cfg.model.encoder)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = make_ema(accelerator.unwrap_model(model), cfg.train.ema_decay)
    if cfg.model.compile:
        model = torch.compile(model)
    return Session(cfg, info, accelerator, run_dir, model, optimizer, build_criterion(cfg, info).to(accelerator.device),
                   Normalizer(*normalization(cfg.data, info)).to(accelerator.device), ema, plan, resume_from,
                   channels_last, time.time() if started is None else started, resume_inexact=resume_inexact,
                   asked=asked)


def initial_model(cfg: Config, info: DatasetInfo, accelerator, run_dir: Path,  # noqa: ANN001
                  resumed: bool) -> torch.nn.Module:
    """The model a run starts from: built, `model.init_from`'s tensors (a new run), a whole-run freeze, SyncBN."""
    from segdist.models import build_from_config

    model = build_from_config(cfg.model, info.num_classes)
    if cfg.model.init_from and not resumed:  # a resumed run's checkpoint replaces every tensor
        report = init_from(model, cfg.model.init_from, cfg.model.arch, cfg.model.encoder)
        if accelerator.is_main_process:
            print(f"segdist: {report.line()}", flush=True)
            write_json_atomic(run_dir / "init_from.json", report.to_dict())
    if cfg.model.freeze_encoder is True:  # before DDP wraps the model, so DDP never expects these gradients
        freeze.set_frozen(model, True)
    if cfg.model.sync_bn:
        model = sync_batchnorm(accelerator, model)
    return model


def check_run_dir(cfg: Config, run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a new run in the directory of an earlier one that has checkpoints (a read only).

    A run directory belongs to one run: `--resume` continues it, `--overwrite` deletes it first.
    """
    if resume is not None and overwrite:
        raise ConfigError("--resume (or --resume-from) and --overwrite exclude each other: continue the run "
                          "or start it over")
    if overwrite:
        init_from = getattr(cfg.model, "init_from", None)
        if init_from and Path(init_from).resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(f"model.init_from {init_from} is inside {run_dir}, which --overwrite would delete")
        return
    saved = run_dir / "checkpoints"
    if resume is None and saved.is_dir() and any(saved.iterdir()):
        raise DataError(f"{run_dir} holds the checkpoints of an earlier run named train.name={cfg.train.name}: "
                        f"continue it with --resume, start it over with --overwrite (deletes {run_dir}), or "
                        f"choose another train.name")


def start(s: Session, steps: int) -> None:
    """Fix the step count: LR schedule, config.yaml; then restore `--resume`'s checkpoint and start the trackers."""
    from accelerate.utils import set_seed

    cfg, accelerator = s.cfg, s.accelerator
    s.state["max_steps"] = s.state["planned_steps"] = cfg.train.max_steps = steps
    s.state["unfreeze_at"] = freeze.unfreeze_step(cfg.model.freeze_encoder, steps)
    s.state["precision"] = cfg.train.mixed_precision  # in effect: what a resumed `auto` run goes on in
    if cfg.data.resize_schedule:  # fixed now, in steps, and restored by a resume (data/stages.py)
        s.state["resize_stages"] = stages.plan_stages(cfg.data.resize_schedule, steps)
    s.state["order"], s.state["shape"], s.state["asked"] = s.plan.state(), vars(s.plan.shape).copy(), s.asked
    s.total_batches = steps * cfg.optim.accumulate
    s.scheduler = build_scheduler(cfg.optim, s.optimizer, steps)
    # Stochastic layers (dropout) draw differently on each rank; checkpoints save every rank's RNG.
    set_seed(cfg.train.seed, device_specific=True)
    if s.resume_from is not None:
        restore(s, s.resume_from)
        refit_schedule(s.scheduler, cfg.optim, s.state["planned_steps"], s.state["replans"])
    if s.state.get("resize_stages"):
        s.say(f"data.resize_schedule: {stages.describe(s.state['resize_stages'], steps)}")
    if s.main:  # the resolved config, with the step count a budget chose: a checkpoint alone reproduces the run
        save_config(cfg, s.run_dir / "config.yaml")
        trackers.start(accelerator, cfg, s.run_dir)
        truncate_log(s.run_dir / "train_log.jsonl", s.state["update"])
        truncate_log(s.run_dir / "samples.jsonl", s.state["update"])
    accelerator.wait_for_everyone()  # no rank appends to samples.jsonl before it is cut back to the checkpoint
    s.say(f"training {cfg.model.arch}/{cfg.model.encoder} on {redact(s.info.root)} ({s.info.num_classes} classes), "
          f"{accelerator.num_processes} process(es) on {accelerator.device}, {s.per_epoch} batches of "
          f"{cfg.data.batch_size} per process per epoch, {s.state['max_steps']} optimizer steps; each epoch "
          f"{s.plan.samples_per_epoch} of {s.plan.epoch_length} samples in global batches of "
          f"{s.plan.shape.global_batch} (the order's tail is dropped)")


def restore(s: Session, path: Path) -> None:
    """Load a complete checkpoint: weights, optimizer, scheduler, scaler, every rank's RNG, EMA, state.

    Nothing in it is unpickled (runs.checkpoints.load_training_state).
    """
    from safetensors.torch import load_file

    checkpoints.load_training_state(s.accelerator, path, s.model, s.optimizer, s.scheduler,
                                    saved_state(path)["shape"]["processes"], inexact=s.resume_inexact)
    if s.ema is not None:
        ema_file = path / checkpoints.EMA_FILE
        if not ema_file.is_file():
            raise CheckpointError(f"{path} has no {checkpoints.EMA_FILE} but train.ema_decay is set")
        s.ema.load_state_dict(load_file(str(ema_file)))
    saved = saved_state(path)
    skipped = {**dict.fromkeys(SKIP_REASONS, 0), **saved.get("data_skipped", {})}  # reasons added since it was saved
    s.state.update(saved, data_skipped=skipped, order=s.plan.state(), shape=vars(s.plan.shape).copy(), asked=s.asked)
    rescale_batches(s, saved["shape"]["accumulate"])
    if saved["order"]["global_batch"] != s.plan.shape.global_batch:
        carry_steps(s, saved)
    s.say(f"resumed from {path} at step {s.state['update']}")


def carry_steps(s: Session, saved: dict) -> None:
    """The rest of a run resumed on another global batch, in samples: its end moves to the end of the
    same epoch (or after as many samples), and the LR schedule is refitted at the resume step as a
    budget's re-plan is (optim.lr_factor), so it keeps its shape over the samples still to come."""
    update, was = s.state["update"], saved["max_steps"]
    before = saved_plan(s.plan, saved["order"])
    steps = carried_end(before, s.plan, was, update)
    unfreeze_at = s.state["unfreeze_at"]
    if unfreeze_at > update:
        s.state["unfreeze_at"] = carried_end(before, s.plan, unfreeze_at, update)
    if steps != was:
        s.state["replans"].append([update, steps])
    s.state["max_steps"] = s.cfg.train.max_steps = steps
    s.total_batches = steps * s.plan.shape.accumulate
    s.say(f"segdist: the run's {was - update} remaining steps of {before.shape.global_batch} samples are "
          f"{steps - update} steps of {s.plan.shape.global_batch}: it ends at step {steps}; the LR schedule "
          "continues over the same samples")


def rescale_batches(s: Session, saved_accumulate: int) -> None:
    """Micro-batch counts of a checkpoint written with another accumulation, in this run's micro-batches.

    Checkpoints are written at optimizer steps, so every count is a whole number of updates.
    """
    accumulate = s.plan.shape.accumulate
    s.state["batch"] = s.state["update"] * accumulate
    s.state["validated_at"] = s.state["validated_at"] // saved_accumulate * accumulate
    s.accelerator.step = s.state["update"] * accumulate  # accelerate's micro-step count decides when to sync
