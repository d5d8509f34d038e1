"""Runs in a Ray worker: convert one shard's inputs, encode each as tar members, write the shard and its record.

A task's inputs are fixed before conversion (shard k of a split holds inputs k*N .. (k+1)*N-1),
so the shard's bytes depend only on them, never on which worker or node runs it. The task
writes its tar part(s) under temporary names and publishes each when complete, then writes a
small JSON record (parts, byte offsets, statistics): a shard counts as done once its record
exists. Only that record travels back to the driver, never image bytes. No webdataset/torch
import here: workers stay light.

A task whose directory is an object-store prefix writes its parts into a node-local temporary
directory, then uploads each part and, last, its record (upload_shard_task): no node needs a
filesystem shared with the others.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from segdist import storage
from segdist.errors import DataError
from segdist.format.tar_writer import TarShard
from segdist.prepare.inputs import Sample, SkipSample, encode_png
from segdist.prepare.tally import Encoded, Tally
from segdist.utils.files import write_json_atomic

_FEW_CLASSES = 16  # below this many classes, counting each id beats a histogram


@dataclass
class ShardTask:
    """Shard `index` of `split`: which inputs, where to write it, and how to label it."""

    split: str
    index: int
    specs: Sequence
    directory: Path | str  # where the parts and the record go: the split's staging directory or store prefix
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
            shard.write(encoded.key, encoded.files, np.flatnonzero(encoded.class_pixels).tolist())
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


def upload_shard_task(task: ShardTask, convert: Callable[[object], object]) -> dict:
    """`run_shard_task` into a node-local temporary directory, then its parts and its record uploaded to the
    task's store prefix. A failed upload returns {"error": message, "resumable": True}: what is up stays."""
    with tempfile.TemporaryDirectory(prefix="segdist-shard-") as local:
        record = run_shard_task(replace(task, directory=Path(local)), convert)
        if "error" in record:
            return record
        try:
            for part in record["parts"]:
                storage.publish_file(Path(local) / part["name"], storage.join(task.directory, part["name"]))
            storage.publish_bytes(json.dumps(record).encode(), storage.join(task.directory, f"{task.stem}.json"))
        except storage.ShardUnavailable as exc:
            return {"error": f"could not upload shard {task.stem}: {exc}", "resumable": True}
    return record


def write_shard(task: ShardTask, convert: Callable[[object], object]) -> dict:
    """Convert and write one shard into its local staging directory or its object-store prefix."""
    if storage.is_local(task.directory):
        return run_shard_task(task, convert)
    return upload_shard_task(task, convert)


def ray_shard_task(task: ShardTask, convert: Callable[[object], object]) -> dict:
    """`write_shard` plus the Ray node it ran on (for the driver's report)."""
    import ray

    return dict(write_shard(task, convert), node=ray.get_runtime_context().get_node_id())


def label_counts(label: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, int]:
    """Pixels of each class id and of the ignore index in a label map."""
    if label.dtype == np.uint8 and num_classes < _FEW_CLASSES:
        # One vectorised comparison per id: 5x faster than a 256-bin histogram with a few classes.
        counts = [np.count_nonzero(label == c) for c in (*range(num_classes), ignore_index)]
        return np.array(counts[:-1], np.int64), int(counts[-1])
    if label.dtype == np.uint8 and label.size < 2**24:  # float32 counts are exact below 2**24
        counts = cv2.calcHist([label], [0], None, [256], [0, 256]).ravel().astype(np.int64)  # ~2x np.bincount
    else:
        counts = np.bincount(label.ravel(), minlength=max(num_classes, ignore_index + 1))
    return counts[:num_classes].astype(np.int64), int(counts[ignore_index])


def encode_sample(s: Sample, num_classes: int, ignore_index: int) -> Encoded:
    """Label PNG, per-sample json and statistics of one converted sample."""
    h, w = s.label.shape
    class_pixels, ignore_pixels = label_counts(s.label, num_classes, ignore_index)
    if class_pixels.sum() + ignore_pixels != h * w:
        raise DataError(f"{s.key}: label map holds ids outside 0..{num_classes - 1} and {ignore_index}")
    mean, std = s.channel_mean, s.channel_std
    meta = dict(s.meta, key=s.key, height=h, width=w, classes=np.flatnonzero(class_pixels).tolist())
    files = {
        s.image_ext: s.image,
        "seg.png": encode_png(s.label),
        "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
    }
    return Encoded(s.key, files, class_pixels, ignore_pixels, mean * h * w, (std**2 + mean**2) * h * w, h * w)
