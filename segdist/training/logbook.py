"""What a training run writes as it goes: train_log.jsonl, the trackers' scalars, the bar, summary.json.

Where the time goes (waiting for data or computing) is kept per log interval and in total; the
run warns once when it is data-bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from segdist.distributed import agree
from segdist.errors import NonFiniteLoss
from segdist.runs import checkpoints
from segdist.utils.console import print_line

DATA_BOUND_SHARE = 0.10  # warn when the loop waits for data longer than this share of the time


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


def log_interval(s: Any, bar: tqdm) -> None:  # s: a train.session.Session
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
    warn_if_data_bound(s, figures["data_wait_share"])


def warn_if_data_bound(s: Any, share: float) -> None:
    """Once per run, after the start-up intervals: the loop waited for data too long."""
    settled = s.state["update"] > 2 * s.cfg.train.log_every
    if share > DATA_BOUND_SHARE and settled and not s.warned_data_bound:
        s.warned_data_bound = True
        s.say(f"\nsegdist: WARNING: data-bound: the loop waited for data {share:.0%} of the "
              f"time; raise data.workers (now {s.cfg.data.workers}) or see `segdist bench-data`")


def flush_log(s: Any) -> None:
    """Append the buffered per-step lines to train_log.jsonl (main process)."""
    if s.main and s.log_lines:
        with open(s.run_dir / "train_log.jsonl", "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in s.log_lines)
    s.log_lines.clear()


def truncate_log(path: Path, step: int) -> None:
    """Drop per-step log lines past `step` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def finish(s: Any, stop: str) -> dict:
    """summary.json, the closing lines, trackers closed; raises NonFiniteLoss for a run stopped by one."""
    flush_log(s)
    summary = summarise(s, stop)
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


def summarise(s: Any, stop: str) -> dict:
    """The run's summary.json: steps, stop reason, best and last mIoU, unreadable data, throughput."""
    totals, state = s.totals, s.state
    return {"run_dir": str(s.run_dir), "steps": state["update"], "stop": stop,
            "best_miou": state["best_miou"], "best_step": state["best_step"], "last_miou": state["last_miou"],
            "world_size": s.accelerator.num_processes, "last_loss": s.last_loss,
            "nonfinite_skipped": state["nonfinite_skipped"],
            "data_skipped": dict(state["data_skipped"]), "storage_retries": state["storage_retries"],
            "unavailable_shards": gathered_unavailable(s),
            "images_per_s_per_process": totals["images"] / max(totals["elapsed"], 1e-9),
            "data_wait_share": totals["waited"] / max(totals["elapsed"], 1e-9),
            "max_steps": state["max_steps"], "elapsed_s": time.time() - s.started,
            "samples_decoded": int(agree(s.accelerator, totals["decoded"])[0])}  # by this job, every rank


def gathered_unavailable(s: Any) -> dict:
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
    h = hashlib.sha1()
    for name, tensor in sorted(model.named_parameters()):
        h.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
