"""Run a prepare job into a local dataset directory or an object-store prefix, and report its splits.

`prepare(build, out, ...)` reads the inputs (`build()`: a source's job) while a local Ray cluster
starts in the background (ray_cluster.ray_started_early), unless the output shows that nothing is
left to convert. An s3:// --out is written by the tasks themselves where the inputs are URLs
(to_store.py), else converted in a work directory and uploaded (upload.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from segdist import storage
from segdist.prepare.driver import write_dataset
from segdist.prepare.jobs import PrepareJob
from segdist.prepare.ray_cluster import ray_started_early
from segdist.prepare.to_store import write_to_store
from segdist.prepare.upload import UPLOADED, default_work_dir, prepare_to_store

INPUT_KEYS = ("images", "annotations", "masks", "root")  # the source record's entries that name inputs


def prepare(build: Callable[[], PrepareJob], out: str | Path, *, workers: int | None = None,
            address: str | None = None, overwrite: bool = False, work_dir: str | Path | None = None) -> dict:
    """`build()` the job (reading the inputs) while Ray starts, then `write` it; returns dataset.json."""
    with ray_started_early(workers, address, wanted=may_convert(out, work_dir)):
        job = build()
        return write(job, out, workers=workers, address=address, overwrite=overwrite, work_dir=work_dir)


def may_convert(out: str | Path, work_dir: str | Path | None = None) -> bool:
    """False where the output shows every shard converted already (then no Ray is started early)."""
    if not storage.is_local(out):
        return not (Path(work_dir or default_work_dir(str(out))) / UPLOADED).is_file()
    stagings = list(Path(out).glob(".*.partial")) if Path(out).is_dir() else []
    return not stagings or not all(_complete(staging) for staging in stagings)


def _complete(staging: Path) -> bool:
    """Whether a staging directory holds a record for every one of its shards."""
    try:
        tasks = json.loads((staging / "state.json").read_text())["tasks"]
    except (OSError, ValueError, KeyError):
        return False
    return len([p for p in staging.glob("*.json") if p.name != "state.json"]) >= tasks


def write(job: PrepareJob, out: str | Path, *, workers: int | None = None, address: str | None = None,
          overwrite: bool = False, work_dir: str | Path | None = None) -> dict:
    """Convert `job` into `out` (a directory or s3://bucket/prefix); prints a line per split, returns dataset.json."""
    options = {"workers": workers, "address": address, "overwrite": overwrite}
    if storage.is_local(out):
        out = Path(out)
        manifest = write_dataset(out, job, **options)
    elif remote_inputs(job):
        manifest = write_to_store(str(out), job, **options)
    else:
        manifest = prepare_to_store(str(out), job, work_dir=work_dir, **options)
    print(report(manifest, job, out))
    return manifest


def remote_inputs(job: PrepareJob) -> bool:
    """Whether the job reads its inputs from URLs (then its tasks upload their shards themselves, to_store.py)."""
    return any(isinstance(job.source.get(key), str) and not storage.is_local(job.source[key]) for key in INPUT_KEYS)


def report(manifest: dict, job: PrepareJob, out: str | Path) -> str:
    """The closing lines: classes, ignore index, and each split's samples, shards, skips and dropped annotations."""
    lines = [f"\nprepared {out} ({len(job.classes)} classes, ignore index {job.ignore_index})"]
    for split in job.splits:
        rec = manifest["splits"][split]
        line = f"  {split:<6} {rec['samples']:>6} samples  {len(rec['shards']):>4} shards"
        if rec["skipped"]:
            line += "  skipped: " + ", ".join(f"{k}={v}" for k, v in rec["skipped"].items())
        if rec["dropped_annotations"]:
            line += "  dropped annotations: " + ", ".join(f"{k}={v}" for k, v in rec["dropped_annotations"].items())
        lines.append(line)
    return "\n".join(lines)
