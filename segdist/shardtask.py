"""Runs in a Ray worker: convert one shard's inputs and write that shard, then its record.

A task's inputs are fixed before conversion (shard k of a split holds inputs k*N .. (k+1)*N-1),
so the shard's bytes depend only on them, never on which worker or node runs it. The task
writes its tar part(s) under temporary names and publishes each when complete, then writes a
small JSON record (parts, byte offsets, statistics): a shard counts as done once its record
exists. Only that record travels back to the driver, never image bytes. No webdataset/torch
import here: workers stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segdist.encode import Tally, encode_sample
from segdist.manifest import write_json_atomic
from segdist.shardfile import TarShard
from segdist.sources.common import DataError, SkipSample


@dataclass
class ShardTask:
    """Shard `index` of `split`: which inputs, where to write it, and how to label it."""

    split: str
    index: int
    specs: Sequence
    directory: Path  # where the parts and the record go (the split's staging directory)
    num_classes: int
    ignore_index: int
    max_bytes: int | None

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def record_path(self) -> Path:
        return Path(self.directory) / f"{self.stem}.json"


def run_shard_task(task: ShardTask, convert: Callable[[object], object]) -> dict:
    """Convert and write one shard; returns its record, or {"error": message} for a run-stopping DataError.

    Bad inputs (SkipSample) are counted in the record's tally. On any exception (including the
    KeyboardInterrupt of a cancelled Ray task) the unfinished part is removed; the driver removes
    parts already published when it rolls the run back.
    """
    tally = Tally(task.num_classes)
    shard = TarShard(Path(task.directory), task.stem, task.max_bytes)
    try:
        for spec in task.specs:
            try:
                encoded = encode_sample(convert(spec), task.num_classes, task.ignore_index)
            except SkipSample as exc:
                tally.skip(getattr(spec, "key", "?"), exc.reason, exc.detail)
                continue
            shard.write(encoded.key, encoded.files)
            tally.add(encoded)
        parts = shard.close()
    except DataError as exc:
        shard.abort()
        return {"error": str(exc)}
    except BaseException:
        shard.abort()
        raise
    record = {"split": task.split, "index": task.index, "inputs": len(task.specs),
              "parts": [p.to_json() for p in parts], "tally": tally.to_json()}
    write_json_atomic(task.record_path, record)
    return record


def ray_shard_task(task: ShardTask, convert: Callable[[object], object]) -> dict:
    """`run_shard_task` plus the Ray node it ran on (for the driver's report)."""
    import ray

    return dict(run_shard_task(task, convert), node=ray.get_runtime_context().get_node_id())
