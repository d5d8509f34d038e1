"""The Ray driver: fan shard tasks out over the cluster, collect their records, then publish the dataset.

Which inputs go into which shard is fixed before conversion: shard k of a split holds inputs
k*shard_size .. (k+1)*shard_size-1 of the split in shard order (fingerprint.shard_order: the
source's stable order, shuffled with a seed fixed by the split's name). Each Ray task converts its
inputs and writes its own shard (task.py); the driver only schedules tasks (at most 2 x workers in
flight) and collects their small records. Shards are therefore byte-identical for any number of
workers and nodes, and memory stays bounded.

A split is written into a hidden staging directory `.<split>.<fingerprint>.partial/` beside the
manifest (staging.py). An interrupted run resumes shard by shard from it; a run-stopping
DataError cancels the remaining tasks and removes what this run wrote, so the output directory is
left exactly as it was. When every split is complete, splits.py moves the shards into place and
writes dataset.json. An object-store --out with remote inputs has the same steps in to_store.py,
with the staging directory a prefix in the store (store_staging.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

from tqdm import tqdm

from segdist.errors import DataError
from segdist.format.manifest import MANIFEST, read_manifest
from segdist.prepare.fingerprint import fingerprint, shard_order
from segdist.prepare.jobs import PrepareJob
from segdist.prepare.ray_cluster import ray_session
from segdist.prepare.splits import check_converted, publish, split_record
from segdist.prepare.staging import Staging
from segdist.prepare.task import ShardTask
from segdist.utils import faults


class ResumableError(DataError):
    """A run stopped with what it finished left in place (a failed upload): the same command resumes it."""


def run_tasks(tasks: Iterator[ShardTask], convert: Callable, workers: int) -> Iterator[tuple[ShardTask, dict]]:
    """Run shard tasks on Ray with at most 2 x workers in flight; yields (task, record) as each finishes.

    Closing the generator (an error, an interrupt) cancels the tasks still in flight and waits
    until they have ended, so nothing writes into the output afterwards.
    """
    import ray

    from segdist.prepare.task import ray_shard_task

    # SPREAD: a task's inputs and output are where every node reaches them, so the first tasks need not wait
    # for the driver's node while the others idle
    remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(ray_shard_task)
    convert_ref = ray.put(convert)
    pending: dict = {}
    try:
        while True:
            while len(pending) < 2 * workers and (task := next(tasks, None)) is not None:
                pending[remote.remote(task, convert_ref)] = task
            if not pending:
                return
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ref)
            yield task, ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref)
        for ref in pending:
            try:
                ray.get(ref)
            except (ray.exceptions.RayError, KeyboardInterrupt):
                pass


def check_target(out: Path | str, job: PrepareJob, manifest: dict | None, overwrite: bool) -> None:
    """Refuse to mix this run with what `out` holds, unless --overwrite allows replacing it."""
    if manifest is None:
        return
    same = (manifest["classes"], manifest["ignore_index"], manifest["palette"]) == (
        job.classes, job.ignore_index, job.palette)
    others = sorted(set(manifest["splits"]) - set(job.splits))
    if not same and (not overwrite or others):
        raise DataError(
            f"{out}/{MANIFEST} has classes {manifest['classes']} (ignore index {manifest['ignore_index']}) "
            f"and its palette; this run has {job.classes} (ignore index {job.ignore_index})"
            + (f"; split(s) {others} would keep the old labels: write them again in this run or use another --out"
               if overwrite else "; pass --overwrite to replace the dataset's splits")
        )
    for split in job.splits:
        if split in manifest["splits"] and not overwrite:
            raise DataError(f"{out} already holds split '{split}' ({MANIFEST}); pass --overwrite to replace it")


def write_dataset(out: Path, job: PrepareJob, *, workers: int | None = None, address: str | None = None,
                  overwrite: bool = False) -> dict:
    """Convert every split of `job` into shards under `out` and record them in dataset.json; returns it."""
    check_job(job, workers)
    out = Path(out).resolve()  # Ray workers may run in another directory (or on another node)
    manifest = read_manifest(out) if (out / MANIFEST).exists() else None
    fingerprints = {split: fingerprint(job, split) for split in job.splits}
    stagings = {split: Staging(out, split, fp) for split, fp in fingerprints.items()}
    for split, staging in stagings.items():
        staging.check((manifest or {"splits": {}})["splits"].get(split), overwrite)
    check_target(out, job, manifest, overwrite)
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    opened = {split: staging.open(len(_chunks(job, split))) for split, staging in stagings.items()}
    try:
        records = convert_splits(job, stagings, workers, address)
        splits = {split: split_record(job, split, records[split], fingerprints[split]) for split in job.splits}
        check_converted(splits)
    except DataError:
        for split, staging in stagings.items():
            staging.rollback(*opened[split])
        if created_out and not any(out.iterdir()):
            out.rmdir()
        raise
    return publish(out, job, manifest, stagings, splits)


def check_job(job: PrepareJob, workers: int | None) -> None:
    """Refuse a job that cannot be written: nothing selected, bad sizes or split names, keys twice."""
    if not any(job.splits.values()):
        raise DataError("nothing selected: no input matches the given classes and options; nothing was written")
    if job.shard_size < 1 or (job.shard_bytes is not None and job.shard_bytes < 1):
        raise DataError("--shard-size and --shard-bytes must be at least 1")
    if workers is not None and workers < 1:
        raise DataError("--workers must be at least 1")
    for split, specs in job.splits.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", split):
            raise DataError(f"split name '{split}' must be letters, digits and '_' (it starts shard file names)")
        if not specs:
            raise DataError(f"split '{split}' gets no input (of {sum(map(len, job.splits.values()))}); "
                            "nothing was written")
        _check_unique_keys(split, specs)


def _check_unique_keys(split: str, specs: Sequence) -> None:
    first: dict[str, object] = {}
    for spec in specs:
        if spec.key in first:
            raise DataError(f"split '{split}': inputs {_input_name(first[spec.key])} and {_input_name(spec)} "
                            f"map to the same key '{spec.key}'")
        first[spec.key] = spec


def _input_name(spec: object) -> str:
    return str(getattr(spec, "path", None) or getattr(spec, "image_path", None) or spec.key)


def _chunks(job: PrepareJob, split: str) -> list[Sequence]:
    specs = shard_order(job, split)
    return [specs[i : i + job.shard_size] for i in range(0, len(specs), job.shard_size)]


def convert_splits(job: PrepareJob, stagings: dict, workers: int | None,
                   address: str | None) -> dict[str, dict[int, dict]]:
    """Run every shard task not done yet; returns each split's records by shard index.

    `stagings`: each split's Staging (a local directory) or StoreStaging (an object-store prefix).
    """
    num_classes = len(job.classes)
    records = {split: staging.completed() for split, staging in stagings.items()}
    todo = [
        ShardTask(split, k, chunk, stagings[split].dir, num_classes, job.ignore_index, job.shard_bytes)
        for split in job.splits for k, chunk in enumerate(_chunks(job, split)) if k not in records[split]
    ]
    total = sum(len(specs) for specs in job.splits.values())
    done = total - sum(len(t.specs) for t in todo)
    nodes: dict[str, Counter] = {split: Counter() for split in job.splits}
    if not todo:
        return records
    try:
        with ray_session(workers, address) as parallel, \
                tqdm(total=total, initial=done, desc="prepare " + ",".join(job.splits), unit="img",
                     dynamic_ncols=True) as bar, closing(run_tasks(iter(todo), job.convert, parallel)) as results:
            for task, record in results:
                if "error" in record:
                    raise (ResumableError if record.get("resumable") else DataError)(record["error"])
                nodes[task.split][record.pop("node")] += 1
                records[task.split][task.index] = record
                bar.update(len(task.specs))
                faults.at_step(sum(map(len, records.values())))
                faults.hit("prepare_stop")  # the tests' interrupted run: stop once this many shards are in
    finally:
        # A cancelled task may still be unwinding when ray.get reports it cancelled: its temporary
        # files are garbage once every task has ended or been cancelled.
        for staging in stagings.values():
            staging.remove_temporaries()
    for split, used in nodes.items():
        if used:
            print(f"ray: split '{split}' converted in {sum(used.values())} tasks on {len(used)} node(s): "
                  + ", ".join(f"{node[:12]}={n}" for node, n in sorted(used.items())))
    return records
