"""`segdist bench-data`: the training loader alone, at full speed, to size loader workers before renting GPUs.

Reads the config's training stream (decode, augmentation, batching, and for remote shards the
node's prefetcher; no model) for a few seconds per worker count and prints images/s per process
and per CPU core the loader kept busy. Under
`accelerate launch` every process runs its own share and the main process prints the sum too.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import closing, nullcontext

import psutil

from segdist.config import Config
from segdist.data.info import load_dataset_info
from segdist.data.plan import Shape, plan_for
from segdist.data.prefetch import node_prefetcher
from segdist.data.tar_reader import Reader
from segdist.data.train_loader import train_loader
from segdist.utils.secrets import redact


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of a process and all its children (loader workers), user + system."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def measure(cfg: Config, workers: int, seconds: float, rank: int = 0, world_size: int = 1) -> dict:
    """Images/s of the training loader with `workers` workers, and the CPU cores it kept busy."""
    info = load_dataset_info(cfg.data.shards)
    data = dataclasses.replace(cfg.data, workers=workers)
    me = psutil.Process()
    images, start, cpu_start = 0, None, 0.0
    plan = plan_for(data, info, cfg.train.seed, Shape(cfg.data.batch_size, world_size, cfg.optim.accumulate))
    prefetcher = node_prefetcher(plan, Reader.from_config(data, info.digests()), rank, local_rank(), 0)  # as training
    with train_loader(data, info, plan, rank=rank, start=0, end=10**9) as loader, \
            closing(prefetcher) if prefetcher else nullcontext():
        for n, (batch, _, _) in enumerate(loader):
            if prefetcher:
                prefetcher.advance(n // cfg.optim.accumulate)
            if start is None:  # the first batch pays for worker start-up: not counted
                start, cpu_start = time.perf_counter(), cpu_seconds(me)
                continue
            images += batch.shape[0]
            if time.perf_counter() - start >= seconds:
                break
        elapsed = time.perf_counter() - start
        busy = (cpu_seconds(me) - cpu_start) / elapsed
    return {"workers": workers, "images_per_s": images / elapsed, "cores_busy": busy,
            "images_per_s_per_core": images / elapsed / max(busy, 1e-9)}


def bench_data(cfg: Config, workers: list[int] | None = None, seconds: float = 15.0) -> list[dict]:
    """Measure each worker count on every process at once; print a table (main process)."""
    from segdist.distributed import agree, make_accelerator

    accelerator = make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    results = []
    for w in workers or [cfg.data.workers]:
        agree(accelerator, 0.0)  # every process measures the same worker count at the same time
        result = measure(cfg, w, seconds, rank, world)
        result["all_processes_images_per_s"], result["all_processes_cores_busy"] = agree(
            accelerator, result["images_per_s"], result["cores_busy"])
        results.append(result)
    if rank == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"training loader of {redact(cfg.data.shards)} (crop {cfg.data.crop_size}, batch {cfg.data.batch_size}), "
              f"{world} process(es), {cores} CPU core(s) available to each; figures of process 0:")
        print(f"{'workers':>7}  {'images/s':>9}  {'cores busy':>10}  {'images/s per core':>17}"
              + (f"  {'all processes images/s':>22}" if world > 1 else ""))
        for r in results:
            print(f"{r['workers']:>7}  {r['images_per_s']:>9.1f}  {r['cores_busy']:>10.2f}  "
                  f"{r['images_per_s_per_core']:>17.1f}"
                  + (f"  {r['all_processes_images_per_s']:>22.1f}" if world > 1 else ""))
    return results
