"""The training loop: one config, one CPU process to many GPU nodes (accelerate + DDP).

Read top to bottom: setup (run dir, accelerator, data, model, optimiser), then the loop
(step, log, validate, checkpoint), then the helpers it calls.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from segdist.config import Config, save_config
from segdist.data import (DatasetInfo, Normalizer, eval_loader, load_dataset_info, normalization, steps_per_epoch,
                          train_loader)
from segdist.manifest import class_weights
from segdist.sources.common import DataError

STATE_FILE = "segdist_state.json"


class StopRequested:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) set a flag; the loop checkpoints and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001
        self.requested = True


def requested_world_size() -> int | None:
    """The process count the user asked for: SEGDIST_WORLD_SIZE, else `accelerate launch`'s flags.

    Catches the `accelerate launch --cpu --num_processes 2` trap, which runs one process.
    """
    if os.environ.get("SEGDIST_WORLD_SIZE"):
        return int(os.environ["SEGDIST_WORLD_SIZE"])
    try:
        import psutil

        for proc in psutil.Process().parents()[:3]:
            args = proc.cmdline()
            if any(a.endswith(("accelerate", "accelerate.commands.launch")) for a in args[:3]):
                flags = dict(zip(args, args[1:]))
                flags.update(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
                if "--num_processes" in flags:
                    return int(flags["--num_processes"])
                if "--config_file" in flags:
                    import yaml

                    return int(yaml.safe_load(Path(flags["--config_file"]).read_text()).get("num_processes", 1))
    except (ImportError, OSError, ValueError):
        pass
    return None


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, total_steps: int):
    """Per-step LambdaLR (poly, cosine, step, constant, with linear warmup) or ReduceLROnPlateau."""
    o = cfg.optim
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=o.plateau_factor, patience=o.plateau_patience)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        if o.scheduler == "poly":
            return (1 - progress) ** o.poly_power
        if o.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if o.scheduler == "step":
            return o.gamma ** (step // o.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_criterion(cfg: Config, info: DatasetInfo) -> torch.nn.Module:
    from segdist.losses import build_loss

    weights = cfg.loss.class_weights
    if isinstance(weights, str):
        weights = class_weights(info.split(cfg.data.train_split), weights)
    return build_loss(cfg.loss.name, info.num_classes, ignore_index=info.ignore_index, class_weights=weights,
                      focal_gamma=cfg.loss.focal_gamma, focal_alpha=cfg.loss.focal_alpha,
                      dice_weight=cfg.loss.dice_weight)


def build_for_config(cfg: Config, num_classes: int, encoder_weights: bool = True) -> torch.nn.Module:
    """The configured model; encoder_weights=False skips the pretrained encoder (a checkpoint follows)."""
    from segdist.models import build_from_config

    return build_from_config(cfg.model, num_classes, pretrained=encoder_weights)


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.train.runs_dir) / cfg.train.name


def checkpoints(run_dir: Path) -> list[Path]:
    """Step checkpoints, oldest first."""
    return sorted((run_dir / "checkpoints").glob("step_*"))


def train(cfg: Config, resume: str | None = None) -> dict:
    """Train as configured; returns the final summary (also written to summary.json)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    info = load_dataset_info(cfg.data.shards)
    info.urls(cfg.data.train_split)
    info.urls(cfg.data.val_split)
    # Without CUDA, several processes need cpu=True to form a gloo group (`accelerate launch --multi_gpu`).
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu,
                              gradient_accumulation_steps=cfg.optim.accumulate)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index

    def say(*args, **kwargs) -> None:
        """Print once for the whole job (accelerator.print prints once per node)."""
        if main:
            print(*args, **kwargs, flush=True)

    asked = requested_world_size()
    if asked is not None and asked != world:
        say(
            f"\n{'!' * 78}\nsegdist: WARNING: {asked} processes were requested but the process group has "
            f"{world}.\n`accelerate launch --cpu` runs ONE process; for several CPU processes use "
            f"`--multi_gpu` (segdist forms a gloo group without CUDA), as launch/cpu-2proc.yaml does.\n{'!' * 78}\n",
            file=sys.stderr)
    set_seed(cfg.train.seed)

    run_dir = run_dir_for(cfg)
    resume_from = find_resume(run_dir, resume)
    if main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        shutil.copy(info.root / "dataset.json", run_dir / "dataset.json")

    model = build_for_config(cfg, info.num_classes)
    if cfg.model.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    per_epoch = steps_per_epoch(cfg.data, info, world)
    total_updates = cfg.train.max_steps or cfg.train.epochs * per_epoch // cfg.optim.accumulate
    total_batches = total_updates * cfg.optim.accumulate
    scheduler = build_scheduler(cfg, optimizer, total_updates)
    criterion = build_criterion(cfg, info).to(accelerator.device)
    normalize = Normalizer(*normalization(cfg.data, info)).to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if cfg.model.compile:
        model = torch.compile(model)

    state = {"batch": 0, "update": 0, "epoch": 0, "best_miou": -1.0, "best_step": None, "stale": 0}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / STATE_FILE).read_text())
        say(f"resumed from {resume_from} at step {state['update']}")
    step_log = run_dir / "train_log.jsonl"
    if main:
        truncate_log(step_log, state["update"])

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    stopper = StopRequested()
    say(
        f"training {cfg.model.arch}/{cfg.model.encoder} on {info.root} ({info.num_classes} classes), "
        f"{world} process(es) on {accelerator.device}, {per_epoch} batches of {cfg.data.batch_size} "
        f"per process per epoch, {total_updates} optimizer steps")

    bar = tqdm(total=total_batches, initial=state["batch"], disable=not main, desc="train", dynamic_ncols=True)
    stop_reason = "done"
    t_last, images_since, loss_value = time.perf_counter(), 0, float("nan")
    while state["batch"] < total_batches and stop_reason == "done":
        epoch = state["batch"] // per_epoch
        skip = state["batch"] - epoch * per_epoch  # resuming mid-epoch replays the same stream
        model.train()
        for i, (images, labels) in enumerate(train_loader(cfg.data, info, seed=cfg.train.seed, epoch=epoch,
                                                          rank=rank, world_size=world)):
            if i < skip:
                continue
            images = normalize(images.to(accelerator.device, non_blocking=True))
            labels = labels.to(accelerator.device, non_blocking=True).long()
            if cfg.model.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                loss = criterion(model(images), labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["batch"] += 1
            images_since += images.shape[0] * world
            bar.update(1)
            if accelerator.sync_gradients:
                state["update"] += 1
                if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step()
                loss_value = accelerator.reduce(loss.detach(), "mean").item()
                if main:
                    with open(step_log, "a") as f:
                        f.write(json.dumps({"step": state["update"], "loss": loss_value,
                                            "lr": optimizer.param_groups[0]["lr"], "time": time.time()}) + "\n")
                if main and state["update"] % cfg.train.log_every == 0:
                    now = time.perf_counter()
                    log_scalars(writer, state["update"], loss_value, optimizer, images_since / (now - t_last),
                                accelerator.device)
                    t_last, images_since = now, 0
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                every = cfg.train.checkpoint_every
                if every and state["update"] % every == 0:
                    save_checkpoint(accelerator, run_dir, state, cfg.train.keep_last)
            if stop_all(accelerator, stopper.requested):
                stop_reason = "signal"
                break
            if state["batch"] >= total_batches:
                break
        if stop_reason == "signal":
            save_checkpoint(accelerator, run_dir, state, cfg.train.keep_last)
            break
        # An epoch (or the whole run, when max_steps ends it early) has just ended.
        state["epoch"] = epoch + 1
        finished = state["batch"] >= total_batches
        if state["epoch"] % cfg.train.val_every == 0 or finished:
            metrics = validate(accelerator, model, normalize, cfg, info, writer, state["update"], run_dir)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics["miou"])
            if metrics["miou"] > state["best_miou"]:
                state["best_miou"], state["best_step"], state["stale"] = metrics["miou"], state["update"], 0
                save_checkpoint(accelerator, run_dir, state, None, name="best")
            else:
                state["stale"] += 1
            say(f"epoch {state['epoch']} step {state['update']}: val mIoU {metrics['miou']:.4f} "
                              f"(best {state['best_miou']:.4f} at step {state['best_step']})")
            patience = cfg.train.early_stop_patience
            if patience and state["stale"] >= patience:
                stop_reason = "early_stop"
        last = checkpoints(run_dir)
        if not last or last[-1].name != f"step_{state['update']:08d}":
            if not cfg.train.checkpoint_every or finished or stop_reason != "done":
                save_checkpoint(accelerator, run_dir, state, cfg.train.keep_last)
    bar.close()
    summary = {"run_dir": str(run_dir), "steps": state["update"], "stop": stop_reason,
               "best_miou": state["best_miou"], "best_step": state["best_step"], "world_size": world,
               "last_loss": loss_value}
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        writer.close()
    say(
        f"segdist train: {stop_reason} after {state['update']} steps; best val mIoU {state['best_miou']:.4f} "
        f"at step {state['best_step']}; run dir {run_dir} (TensorBoard: tensorboard --logdir {run_dir / 'tb'})")
    # One line per process: lets anyone check that all ranks ran the same steps and hold the same weights.
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    print(f"[rank {rank}/{world}] node={node} batches={state['batch']} steps={state['update']} "
          f"weights={weights_digest(accelerator.unwrap_model(model))}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


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


def stop_all(accelerator, requested: bool) -> bool:  # noqa: ANN001
    """True on every process when any of them got a stop signal, so all stop at the same step."""
    if accelerator.num_processes == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`--resume` (latest), `--resume PATH`, or None."""
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).exists():
            raise DataError(f"{path} is not a segdist checkpoint (no {STATE_FILE})")
        return path
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, run_dir: Path, state: dict, keep_last: int | None, name: str | None = None) -> Path:  # noqa: ANN001
    """Full training state (model, optimizer, scheduler, scaler, RNG, step) under a temp name, renamed."""
    name = name or f"step_{state['update']:08d}"
    final = run_dir / "checkpoints" / name
    tmp = run_dir / "checkpoints" / f".{name}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last:
            for old in checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def log_scalars(writer, step: int, loss: float, optimizer, images_per_s: float, device) -> None:  # noqa: ANN001
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
    writer.add_scalar("train/images_per_s", images_per_s, step)
    if device.type == "cuda":
        writer.add_scalar("train/gpu_mem_gb", torch.cuda.max_memory_allocated(device) / 2**30, step)


@torch.no_grad()
def validate(accelerator, model, normalize, cfg: Config, info: DatasetInfo, writer, step: int,  # noqa: ANN001
             run_dir: Path) -> dict:
    """Exact, synchronised validation: every sample once across processes, one summed confusion matrix.

    Predicts exactly as `segdist evaluate --mode whole` does (segdist.inference), so the two agree.
    """
    from segdist.inference import infer_each, labels_at
    from segdist.metrics import SegmentationMetrics, metrics_from_confusion

    net = accelerator.unwrap_model(model)  # no DDP collectives: processes may run different batch counts
    net.eval()
    metrics = SegmentationMetrics(info.num_classes, info.ignore_index).to(accelerator.device)
    overlays = []
    loader = eval_loader(cfg.data, info, cfg.data.val_split, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, size=cfg.data.val_size)
    for batch in loader:
        images = normalize(batch["images"].to(accelerator.device))
        crops = [image[:, :h, :w] for image, (h, w) in zip(images, batch["sizes"])]
        with accelerator.autocast():
            probs = infer_each(net, crops)
        for i, (p, label) in enumerate(zip(probs, batch["labels"])):
            pred = labels_at(p.float(), label.shape)
            metrics.update(pred[None], label[None].to(accelerator.device).long())
            if len(overlays) < cfg.train.log_images:
                h, w = batch["sizes"][i]
                overlays.append((batch["images"][i, :, :h, :w], label, pred.cpu()))
    result = metrics_from_confusion(metrics.confusion(), info.classes)
    net.train()
    if writer is not None:
        writer.add_scalar("val/miou", result["miou"], step)
        writer.add_scalar("val/pixel_accuracy", result["pixel_accuracy"], step)
        for name, figures in result["per_class"].items():
            if not math.isnan(figures["iou"]):
                writer.add_scalar(f"val_iou/{name}", figures["iou"], step)
        log_overlays(writer, overlays, info, step, run_dir / "val_overlays")
    return result


def log_overlays(writer, overlays: list, info: DatasetInfo, step: int, out: Path) -> None:  # noqa: ANN001
    """Input | ground truth | prediction panels for the first validation images (TensorBoard and PNG)."""
    import cv2

    from segdist.viz import colorize, overlay, panel, save_png

    out.mkdir(exist_ok=True)
    palette = info.palette
    for i, (image, label, pred) in enumerate(overlays):
        rgb = image.numpy().transpose(1, 2, 0)
        gt, pr = label.numpy(), pred.numpy()
        if rgb.shape[:2] != gt.shape:
            rgb = cv2.resize(rgb, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        gt_c, pr_c = colorize(gt, palette, info.ignore_index), colorize(pr, palette, info.ignore_index)
        image = panel(rgb, overlay(rgb, gt_c, gt), overlay(rgb, pr_c, pr))
        writer.add_image(f"val/overlay_{i}", image, step, dataformats="HWC")
        save_png(image, out / f"{i}.png")
