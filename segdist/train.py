"""`segdist train`: one config, from one CPU process to many GPU nodes (accelerate + DDP).

As torchvision's references/segmentation/train.py: `train()` sets up and runs the epochs,
`train_one_epoch()` steps through one, `end_of_epoch()` validates, steps the plateau scheduler,
keeps the best model and decides early stopping. The pieces shared with evaluate and predict
live in their own modules: the process group (distributed.py), checkpoints (checkpoints.py),
scoring (scoring.py), trackers (tracking.py), the time budget (budget.py), the EMA (ema.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from segdist import checkpoints, faults, tracking
from segdist.budget import MAX_GROWTH, Check, StepClock, replan
from segdist.config import Config, save_config
from segdist.data import (SKIP_REASONS, DatasetInfo, Normalizer, eval_loader, load_dataset_info, normalization,
                          steps_per_epoch)
from segdist.distributed import agree, broadcast_buffers, make_accelerator, print_line, sync_batchnorm
from segdist.ema import make_ema
from segdist.manifest import write_json_atomic
from segdist.optim import build_criterion, build_optimizer, build_scheduler, is_plateau, refit_schedule
from segdist.sources.common import DataError

DATA_BOUND_SHARE = 0.10  # warn when the loop waits for data longer than this share of the time


class StopRequested:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) set a flag; the ranks agree to checkpoint and exit."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001
        self.requested = True


class NonFiniteLoss(DataError):
    """The loss was NaN or inf on some rank; the message names the step."""


@dataclass
class Interval:
    """Where the time went since the last log point: waiting for data, or computing."""

    start: float = field(default_factory=time.perf_counter)
    waited: float = 0.0
    images: int = 0

    def figures(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"images_per_s": self.images / elapsed, "data_wait_share": self.waited / elapsed,
                "data_wait_s": self.waited, "elapsed_s": elapsed}


@dataclass
class Session:
    """Everything a running training job holds; `state` is what its checkpoints save."""

    cfg: Config
    info: DatasetInfo
    accelerator: Any
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # built once the step count is known
    criterion: torch.nn.Module
    normalize: Normalizer
    ema: Any
    per_epoch: int  # batches per epoch and process
    total_batches: int
    state: dict
    stopper: StopRequested = field(default_factory=StopRequested)
    log_lines: list = field(default_factory=list)
    last_loss: float = math.nan
    pending_skips: dict = field(default_factory=dict)  # this rank's unreadable data since the last update
    pending_retries: int = 0  # this rank's storage retries since the last update
    unavailable: dict = field(default_factory=dict)  # shard URL -> why it could not be read (this rank)
    interval: Interval = field(default_factory=Interval)
    totals: dict = field(default_factory=lambda: {"waited": 0.0, "elapsed": 0.0, "images": 0})
    warned_data_bound: bool = False
    started: float = field(default_factory=time.time)
    step_clock: StepClock = field(default_factory=StepClock)
    budget_check: Check | None = None  # when a budget run next re-plans its step count (budget.replan)
    channels_last: bool = False  # the model and its inputs are channels-last (models.use_channels_last)

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
            "replans": []}  # a budget's [step, new step count] pairs, which bend the LR schedule


def train(cfg: Config, resume: str | None = None) -> dict:
    """Train as configured; returns the final summary (also written to summary.json)."""
    s = setup(cfg, resume, started=time.time())
    from segdist.data import train_loader

    stop = "done"
    # a budget check may raise the step count: the stream reaches that far (its order does not depend on its end)
    end = s.total_batches * (MAX_GROWTH if s.budget_check else 1)
    loader = train_loader(cfg.data, s.info, seed=cfg.train.seed, rank=s.accelerator.process_index,
                          world_size=s.accelerator.num_processes, start=s.state["batch"], end=end)
    bar = tqdm(total=s.total_batches, initial=s.state["batch"], disable=not s.main, desc="train", dynamic_ncols=True)
    with loader, bar:  # closed on every path: workers released, an error message starts on a new line
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


def setup(cfg: Config, resume: str | None, started: float) -> Session:
    """Process group, run directory, data, model, optimiser, schedule and, on --resume, the saved state."""
    from accelerate.utils import set_seed

    from segdist.models import build_from_config, use_channels_last

    info = load_dataset_info(cfg.data.shards)
    info.shards(cfg.data.train_split), info.shards(cfg.data.val_split)  # fail now if a split is missing
    run_dir = Path(cfg.train.runs_dir) / cfg.train.name
    accelerator = make_accelerator(mixed_precision=cfg.train.mixed_precision, accumulate=cfg.optim.accumulate,
                                   timeout_s=cfg.train.collective_timeout,
                                   trackers=tracking.trackers_for(cfg, run_dir), project_dir=run_dir)
    resume_from = checkpoints.find_resume(run_dir, resume)
    if accelerator.is_main_process:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        checkpoints.remove_partial(run_dir)
        write_json_atomic(run_dir / "dataset.json", info.manifest)
    accelerator.wait_for_everyone()

    set_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_from_config(cfg.model, info.num_classes)
    if cfg.model.sync_bn:
        model = sync_batchnorm(accelerator, model)
    channels_last = use_channels_last(cfg.model.channels_last, accelerator.device, cfg.train.mixed_precision)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model)
    per_epoch = steps_per_epoch(cfg.data, info, accelerator.num_processes)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = make_ema(accelerator.unwrap_model(model), cfg.train.ema_decay)
    if cfg.model.compile:
        model = torch.compile(model)
    s = Session(cfg, info, accelerator, run_dir, model, optimizer, None,
                build_criterion(cfg, info).to(accelerator.device),
                Normalizer(*normalization(cfg.data, info)).to(accelerator.device), ema, per_epoch, 0, new_state())
    s.started, s.channels_last = started, channels_last
    s.state["max_steps"] = s.state["planned_steps"] = cfg.train.max_steps = planned_steps(s, resume_from)
    if s.main:  # the resolved config, with the step count a budget chose: a checkpoint alone reproduces the run
        save_config(cfg, run_dir / "config.yaml")
    s.total_batches = s.state["max_steps"] * cfg.optim.accumulate
    s.scheduler = build_scheduler(cfg.optim, optimizer, s.state["max_steps"])
    accelerator.register_for_checkpointing(s.scheduler)
    # Stochastic layers (dropout) draw differently on each rank; accelerate saves every rank's RNG.
    set_seed(cfg.train.seed, device_specific=True)
    if resume_from is not None:
        restore(s, resume_from)
        refit_schedule(s.scheduler, cfg.optim, s.state["planned_steps"], s.state["replans"])
    if s.main:
        tracking.start(accelerator, cfg, run_dir)
        truncate_log(run_dir / "train_log.jsonl", s.state["update"])
    s.say(f"training {cfg.model.arch}/{cfg.model.encoder} on {info.root} ({info.num_classes} classes), "
          f"{accelerator.num_processes} process(es) on {accelerator.device}, {per_epoch} batches of "
          f"{cfg.data.batch_size} per process per epoch, {s.state['max_steps']} optimizer steps")
    return s


def planned_steps(s: Session, resume_from: Path | None) -> int:
    """train.max_steps, else the count a budget chose (kept in the checkpoints), else epochs x steps per epoch."""
    cfg = s.cfg
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if cfg.train.budget:
        if resume_from is not None:
            return json.loads((resume_from / checkpoints.STATE_FILE).read_text())["max_steps"]
        from segdist.budget import plan_steps

        return plan_steps(s)
    return cfg.train.epochs * s.per_epoch // cfg.optim.accumulate


def restore(s: Session, path: Path) -> None:
    """Load a complete checkpoint: weights, optimizer, scheduler, scaler, every rank's RNG, EMA, state."""
    from safetensors.torch import load_file

    s.accelerator.load_state(str(path))
    if s.ema is not None:
        ema_file = path / checkpoints.EMA_FILE
        if not ema_file.is_file():
            raise checkpoints.CheckpointError(f"{path} has no {checkpoints.EMA_FILE} but train.ema_decay is set")
        s.ema.load_state_dict(load_file(str(ema_file)))
    s.state.update(json.loads((path / checkpoints.STATE_FILE).read_text()))
    s.say(f"resumed from {path} at step {s.state['update']}")


def epoch_end_due(s: Session) -> bool:
    """At an epoch boundary (or the last batch) whose validation and bookkeeping have not run yet.

    True after a resume from a checkpoint written on an epoch's last batch before its end (a stop
    signal there), so the resumed run validates exactly where the uninterrupted one did.
    """
    batch = s.state["batch"]
    at_boundary = batch > 0 and (batch % s.per_epoch == 0 or batch >= s.total_batches)
    return at_boundary and s.state["validated_at"] != batch


def train_one_epoch(s: Session, batches, bar: tqdm) -> str:  # noqa: ANN001
    """Step until the epoch (or the run) ends; returns 'done', 'signal' or 'nonfinite'."""
    cfg, accelerator, state = s.cfg, s.accelerator, s.state
    boundary = (state["batch"] // s.per_epoch + 1) * s.per_epoch
    s.model.train()
    pending_loss, micro = torch.zeros((), device=accelerator.device), 0
    while state["batch"] < (epoch_end := min(boundary, s.total_batches)):  # a budget check may move the end
        waited = time.perf_counter()
        if micro == 0:
            update_began = waited
        images, labels, unread = next(batches)
        s.interval.waited += time.perf_counter() - waited
        note_unread(s, unread)
        images = s.normalize(images.to(accelerator.device, non_blocking=True))
        labels = labels.to(accelerator.device, non_blocking=True).long()
        if s.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(s.model):
            faults.at_step(state["update"] + 1)
            faults.hit("sigusr1")
            faults.pause("slow_step", faults.SLOW_STEP_S)
            loss = faults.loss_value(s.criterion(s.model(images), labels))
            accelerator.backward(loss)
        pending_loss += loss.detach()
        micro += 1
        state["batch"] += 1
        s.interval.images += images.shape[0]
        bar.update(1)
        if not accelerator.sync_gradients:
            continue
        outcome = optimizer_step(s, pending_loss / micro)
        pending_loss, micro = torch.zeros((), device=accelerator.device), 0
        s.step_clock.add(state["update"], time.perf_counter() - update_began)
        if outcome != "done":
            return outcome
        if state["update"] % cfg.train.log_every == 0:
            log_interval(s, bar)
        if s.budget_check and state["update"] >= s.budget_check.at_update:
            check_budget(s, bar)
        every = cfg.train.checkpoint_every
        if every and state["update"] % every == 0 and state["batch"] < epoch_end:
            save_checkpoint(s)  # at an epoch's end the checkpoint follows its validation instead
    return "done"


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


def note_unread(s: Session, unread: dict) -> None:
    """Add what a batch's stream could not read (skips, storage retries, shards given up) to this rank's tally."""
    for reason, n in unread["skipped"].items():
        s.pending_skips[reason] = s.pending_skips.get(reason, 0) + n
    s.pending_retries += unread["retries"]
    for url, why in unread["unavailable"].items():
        if url not in s.unavailable:
            print_line(f"segdist: WARNING: [rank {s.accelerator.process_index}] skipped shard {url}: {why}")
        s.unavailable[url] = why


def optimizer_step(s: Session, loss: torch.Tensor) -> str:
    """One update, decided with the other ranks in one all-reduce: step, skip (non-finite) or stop.

    The same all-reduce sums the mean loss, the stop requests and the unreadable-data counts.
    """
    cfg, state = s.cfg, s.state
    skips = [s.pending_skips.get(reason, 0) for reason in SKIP_REASONS]
    mean_loss, nonfinite, stop, retries, *skipped = agree(
        s.accelerator, loss / s.accelerator.num_processes, (~torch.isfinite(loss)).float(),
        float(s.stopper.requested), s.pending_retries, *skips)
    s.pending_skips.clear()
    s.pending_retries = 0
    state["storage_retries"] += int(retries)
    for reason, n in zip(SKIP_REASONS, skipped):
        state["data_skipped"][reason] += int(n)
    state["update"] += 1
    if nonfinite:
        s.optimizer.zero_grad(set_to_none=True)
        state["nonfinite_skipped"] += 1
        state["nonfinite_in_a_row"] += 1
        where = f"non-finite loss at step {state['update']} (on {int(nonfinite)} rank(s))"
        if cfg.train.nonfinite == "stop":
            s.say(f"segdist: {where}; stopping (train.nonfinite: skip would skip such updates)")
            return "nonfinite"
        s.say(f"segdist: WARNING: {where}: update skipped "
              f"({state['nonfinite_in_a_row']} in a row, {state['nonfinite_skipped']} in all)")
        if state["nonfinite_in_a_row"] >= cfg.train.max_nonfinite:
            s.say(f"segdist: giving up after {state['nonfinite_in_a_row']} non-finite steps in a row")
            return "nonfinite"
    else:
        if cfg.optim.grad_clip:
            s.accelerator.clip_grad_norm_(s.model.parameters(), cfg.optim.grad_clip)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        if s.ema is not None:
            s.ema.update_parameters(s.accelerator.unwrap_model(s.model))
        state["nonfinite_in_a_row"] = 0
    if not is_plateau(s.scheduler):
        s.scheduler.step()
    s.last_loss = mean_loss
    s.log_lines.append({"step": state["update"], "loss": mean_loss, "lr": s.optimizer.param_groups[0]["lr"],
                        "time": time.time()})
    return "signal" if stop else "done"


def log_interval(s: Session, bar: tqdm) -> None:
    """Per-step log lines to train_log.jsonl; throughput and data wait to the trackers and the bar."""
    figures = s.interval.figures()
    s.totals["waited"] += figures["data_wait_s"]
    s.totals["elapsed"] += figures["elapsed_s"]
    s.totals["images"] += s.interval.images
    s.interval = Interval()
    last = s.log_lines[-1] if s.log_lines else None
    flush_log(s)
    if last is None:
        return
    values = {"train/loss": last["loss"], "train/lr": last["lr"], "train/images_per_s": figures["images_per_s"],
              "train/data_wait_share": figures["data_wait_share"]}
    values.update({f"train/skipped_{k}": v for k, v in s.state["data_skipped"].items() if v})
    if s.state["storage_retries"]:
        values["train/storage_retries"] = s.state["storage_retries"]
    if s.accelerator.device.type == "cuda":
        values["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated(s.accelerator.device) / 2**30
    s.accelerator.log(values, step=s.state["update"])
    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", img_s=f"{figures['images_per_s']:.1f}",
                    wait=f"{figures['data_wait_share']:.0%}")
    settled = s.state["update"] > 2 * s.cfg.train.log_every
    if figures["data_wait_share"] > DATA_BOUND_SHARE and settled and not s.warned_data_bound:
        s.warned_data_bound = True
        s.say(f"\nsegdist: WARNING: data-bound: the loop waited for data {figures['data_wait_share']:.0%} of the "
              f"time; raise data.workers (now {s.cfg.data.workers}) or see `segdist bench-data`")


def flush_log(s: Session) -> None:
    """Append the buffered per-step lines to train_log.jsonl (main process)."""
    if s.main and s.log_lines:
        with open(s.run_dir / "train_log.jsonl", "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in s.log_lines)
    s.log_lines.clear()


def end_of_epoch(s: Session) -> str:
    """Validate (every val_every epochs and at the end), step the plateau scheduler, keep the best, checkpoint."""
    cfg, state = s.cfg, s.state
    finished = state["batch"] >= s.total_batches
    state["epoch"] = math.ceil(state["batch"] / s.per_epoch)
    stop = "done"
    if state["epoch"] % cfg.train.val_every == 0 or finished:
        metrics = validate(s)
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
            stop = "early_stop"
    state["validated_at"] = state["batch"]
    every = cfg.train.checkpoint_every
    if not every or state["update"] % every == 0 or finished or stop != "done":
        save_checkpoint(s)
    return stop


def validate(s: Session) -> dict:
    """Exact, synchronised validation: every sample once across processes, one summed confusion matrix."""
    from segdist.metrics import SegmentationMetrics, metrics_from_confusion
    from segdist.scoring import score

    cfg, accelerator = s.cfg, s.accelerator
    faults.hit("validation")
    # the EMA when there is one; never the DDP wrapper: processes may run different batch counts
    net = s.ema.module if s.ema is not None else accelerator.unwrap_model(s.model)
    broadcast_buffers(accelerator, net)
    net.eval()
    metrics = SegmentationMetrics(s.info.num_classes, s.info.ignore_index).to(accelerator.device)
    loader = eval_loader(cfg.data, s.info, cfg.data.val_split, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, size=cfg.data.val_size)
    with loader:
        scored = score(net, loader, s.normalize, metrics, device=accelerator.device,
                       precision=cfg.train.mixed_precision, keep_examples=cfg.train.log_images if s.main else 0)
    result = metrics_from_confusion(metrics.confusion(), s.info.classes)
    unreadable = int(agree(accelerator, len(scored.unreadable))[0])
    net.train()
    if unreadable:
        s.say(f"segdist: WARNING: validation could not read {unreadable} sample(s), e.g. {scored.unreadable[:3]}")
    values = {"val/miou": result["miou"], "val/pixel_accuracy": result["pixel_accuracy"],
              "val/unreadable": unreadable}
    values.update({f"val_iou/{name}": f["iou"] for name, f in result["per_class"].items() if not math.isnan(f["iou"])})
    accelerator.log(values, step=s.state["update"])
    if s.main:
        log_overlays(s, scored.examples)
    return result


def log_overlays(s: Session, examples: list) -> None:
    """Input | ground truth | prediction panels for the first validation images (trackers and PNG)."""
    images = write_overlays(s, examples, s.run_dir / "val_overlays")
    tracking.log_images(s.accelerator, images, s.state["update"])


def write_overlays(s: Session, examples: list, out: Path) -> dict[str, Any]:
    """Render the panels of `examples` and write them as `out/<i>.png`; returns them by tracker tag."""
    import cv2

    from segdist.viz import colorize, overlay, panel, save_png

    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, (image, label, pred) in enumerate(examples):
        rgb = image.numpy().transpose(1, 2, 0)
        gt, pr = label.numpy(), pred.numpy()
        if rgb.shape[:2] != gt.shape:
            rgb = cv2.resize(rgb, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        gt_c, pr_c = (colorize(mask, s.info.palette, s.info.ignore_index) for mask in (gt, pr))
        images[f"val/overlay_{i}"] = panel(rgb, overlay(rgb, gt_c, gt), overlay(rgb, pr_c, pr))
        save_png(images[f"val/overlay_{i}"], out / f"{i}.png")
    return images


def save_checkpoint(s: Session) -> None:
    """A complete step checkpoint of the current state (skipped when this step already has one)."""
    flush_log(s)
    final = s.run_dir / "checkpoints" / checkpoints.step_name(s.state["update"])
    if not checkpoints.missing_files(final) and json.loads((final / checkpoints.STATE_FILE).read_text()) == s.state:
        return
    bad = checkpoints.nonfinite_weights(s.accelerator.unwrap_model(s.model))
    if bad:
        raise checkpoints.CheckpointError(f"refusing to checkpoint non-finite weights ({bad[:3]}) at step "
                                          f"{s.state['update']}")
    checkpoints.save_training_state(s.accelerator, s.run_dir, s.state, s.ema)
    faults.hit("kill_after_checkpoint")
    if s.main:
        checkpoints.prune(s.run_dir, s.cfg.train.keep_last)


def finish(s: Session, stop: str) -> dict:
    """summary.json, the closing lines, trackers closed."""
    flush_log(s)
    totals = s.totals
    summary = {"run_dir": str(s.run_dir), "steps": s.state["update"], "stop": stop,
               "best_miou": s.state["best_miou"], "best_step": s.state["best_step"],
               "last_miou": s.state["last_miou"],
               "world_size": s.accelerator.num_processes, "last_loss": s.last_loss,
               "nonfinite_skipped": s.state["nonfinite_skipped"],
               "data_skipped": dict(s.state["data_skipped"]), "storage_retries": s.state["storage_retries"],
               "unavailable_shards": gathered_unavailable(s),
               "images_per_s_per_process": totals["images"] / max(totals["elapsed"], 1e-9),
               "data_wait_share": totals["waited"] / max(totals["elapsed"], 1e-9),
               "max_steps": s.state["max_steps"], "elapsed_s": time.time() - s.started}
    if s.main:
        (s.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    s.say(f"segdist train: {stop} after {s.state['update']} steps; best val mIoU {s.state['best_miou']:.4f} at step "
          f"{s.state['best_step']}; run dir {s.run_dir} (TensorBoard: tensorboard --logdir {s.run_dir / 'tb'})")
    # One line per process: lets anyone check that all ranks ran the same steps and hold the same weights.
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    print_line(f"[rank {s.accelerator.process_index}/{s.accelerator.num_processes}] node={node} "
               f"batches={s.state['batch']} steps={s.state['update']} "
               f"weights={weights_digest(s.accelerator.unwrap_model(s.model))}")
    s.accelerator.wait_for_everyone()
    s.accelerator.end_training()
    if stop == "nonfinite":
        raise NonFiniteLoss(f"non-finite loss at step {s.state['update']} ({s.state['nonfinite_in_a_row']} in a row); "
                            f"no non-finite weights were applied or saved; the last checkpoint is "
                            f"{(checkpoints.step_checkpoints(s.run_dir) or ['none'])[-1]}")
    return summary


def gathered_unavailable(s: Session) -> dict:
    """Every rank's shards given up on, {url: reason} (one gather, at the end)."""
    if s.accelerator.num_processes == 1:
        return dict(s.unavailable)
    every: list = [None] * s.accelerator.num_processes
    torch.distributed.all_gather_object(every, s.unavailable)
    return {url: why for part in every for url, why in part.items()}


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of every parameter, to compare processes and runs.

    BatchNorm running statistics are left out: under DDP each process updates its own in its
    last forward pass (DDP broadcasts rank 0's at the next one; checkpoints hold rank 0's).
    """
    import hashlib

    h = hashlib.sha1()
    for name, tensor in sorted(model.named_parameters()):
        h.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def truncate_log(path: Path, step: int) -> None:
    """Drop per-step log lines past `step` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))

