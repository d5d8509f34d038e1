"""Run a prepare job into a local dataset directory or an object-store prefix, and report its splits."""

from __future__ import annotations

from pathlib import Path

from segdist import storage
from segdist.prepare.driver import write_dataset
from segdist.prepare.jobs import PrepareJob
from segdist.prepare.upload import prepare_to_store


def write(job: PrepareJob, out: str | Path, *, workers: int | None = None, address: str | None = None,
          overwrite: bool = False, work_dir: str | Path | None = None) -> dict:
    """Convert `job` into `out` (a directory or s3://bucket/prefix); prints a line per split, returns dataset.json."""
    options = {"workers": workers, "address": address, "overwrite": overwrite}
    if storage.is_local(out):
        out = Path(out)
        manifest = write_dataset(out, job, **options)
    else:
        manifest = prepare_to_store(str(out), job, work_dir=work_dir, **options)
    print(report(manifest, job, out))
    return manifest


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
