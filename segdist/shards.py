"""Ray fan-out of shard tasks and the dataset.json manifest assembled from their records.

Which inputs go into which shard is fixed before conversion: shard k of a split holds inputs
k*shard_size .. (k+1)*shard_size-1 of the split in shard order (`shard_order`: the source's stable
order, shuffled with a seed fixed by the split's name). Each Ray task converts its
inputs and writes its own shard (segdist.shardtask); the driver only schedules tasks (at most
2 x workers in flight), collects their small records and writes the manifest. Shards are
therefore byte-identical for any number of workers and nodes, and memory stays bounded.

A split is written into a hidden staging directory `.<split>.<fingerprint>.partial/` beside
the manifest (segdist.staging). An interrupted run resumes shard by shard from it; a
run-stopping DataError cancels the remaining tasks and removes what this run wrote, so the
output directory is left exactly as it was. When every split is complete, the shards are
renamed into place and dataset.json is written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from segdist import __version__
from segdist.encode import Tally
from segdist.manifest import MANIFEST, read_manifest, write_json_atomic
from segdist.shardtask import ShardTask
from segdist.sources.common import DataError, label_dtype
from segdist.staging import Staging

FORMAT = "segdist-shards/2"  # 2: shard records list `offsets`; shard k of a split may have parts k_1, k_2, ...
SHARD_ORDER = "shuffled/1"  # how shard_order arranges a split's inputs (in the resume fingerprint)


@dataclass
class PrepareJob:
    """Everything that decides a prepare run's output bytes (the resume fingerprint hashes all of it)."""

    splits: dict[str, list]  # split -> input specs, in the source's stable order
    convert: Callable  # spec -> Sample; a functools.partial over the source's convert and its options
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    source: dict  # the source's options as recorded in dataset.json
    shard_size: int = 256
    shard_bytes: int | None = None
    unpaired: Counter = field(default_factory=Counter)  # inputs skipped before conversion, by reason


def _jsonable(obj: object) -> object:
    """JSON for what json.dumps cannot encode itself: specs and options (dataclasses), the convert function."""
    if isinstance(obj, functools.partial):
        return {"function": obj.func, "args": obj.args, "keywords": obj.keywords}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"type": type(obj).__qualname__, **vars(obj)}
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def fingerprint(job: PrepareJob, split: str) -> str:
    """Hash of everything that changes a split's output: inputs in full, every option, the code version."""
    settings = {"segdist": __version__, "format": FORMAT, "split": split, "classes": job.classes,
                "palette": job.palette, "ignore_index": job.ignore_index, "source": job.source,
                "convert": job.convert, "shard_size": job.shard_size, "shard_bytes": job.shard_bytes,
                "unpaired": dict(job.unpaired), "order": SHARD_ORDER}
    text = json.dumps([settings, job.splits[split]], sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def ray_session(workers: int | None, address: str | None) -> Iterator[int]:
    """Start a minimal local Ray (or join the cluster at `address`); yield how many tasks to run at once."""
    import ray

    if ray.is_initialized():  # a caller (a test session, a notebook) already holds a Ray cluster
        yield workers or int(ray.cluster_resources().get("CPU", 1))
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats reporting thread
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local-only cluster
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        yield workers or int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def run_tasks(tasks: Iterator[ShardTask], convert: Callable, workers: int) -> Iterator[tuple[ShardTask, dict]]:
    """Run shard tasks on Ray with at most 2 x workers in flight; yields (task, record) as each finishes.

    Closing the generator (an error, an interrupt) cancels the tasks still in flight and waits
    until they have ended, so nothing writes into the output afterwards.
    """
    import ray

    from segdist.shardtask import ray_shard_task

    remote = ray.remote(num_cpus=1)(ray_shard_task)
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


def _check_target(out: Path, job: PrepareJob, manifest: dict | None, overwrite: bool) -> None:
    """Refuse to mix this run with what `out` holds, unless --overwrite allows replacing it."""
    if manifest is None:
        return
    same = (manifest["classes"], manifest["ignore_index"], manifest["palette"]) == (
        job.classes, job.ignore_index, job.palette)
    others = sorted(set(manifest["splits"]) - set(job.splits))
    if not same and (not overwrite or others):
        raise DataError(
            f"{out / MANIFEST} has classes {manifest['classes']} (ignore index {manifest['ignore_index']}) "
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
    _check_job(job, workers)
    out = Path(out).resolve()  # Ray workers may run in another directory (or on another node)
    manifest = read_manifest(out) if (out / MANIFEST).exists() else None
    fingerprints = {split: fingerprint(job, split) for split in job.splits}
    stagings = {split: Staging(out, split, fp) for split, fp in fingerprints.items()}
    for split, staging in stagings.items():
        staging.check((manifest or {"splits": {}})["splits"].get(split), overwrite)
    _check_target(out, job, manifest, overwrite)
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    opened = {split: staging.open(len(_chunks(job, split))) for split, staging in stagings.items()}
    try:
        records = _convert(job, stagings, workers, address)
        splits = {split: split_record(job, split, records[split], fingerprints[split]) for split in job.splits}
        _check_converted(splits)
    except DataError:
        for split, staging in stagings.items():
            staging.rollback(*opened[split])
        if created_out and not any(out.iterdir()):
            out.rmdir()
        raise
    return _publish(out, job, manifest, stagings, splits)


def _check_job(job: PrepareJob, workers: int | None) -> None:
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


def shard_order(job: PrepareJob, split: str) -> list:
    """A split's inputs in the order its shards hold them: shuffled, seeded by the split's name.

    Sources list inputs by sequence, city or id; in that order each shard would hold a few video
    sequences (CamVid train: 2 shards), and a training stream, which draws whole shards into its
    shuffle buffer, would mix the split far worse than a shuffled DataLoader does.
    """
    specs = list(job.splits[split])
    random.Random(f"segdist shard order {split}").shuffle(specs)
    return specs


def _chunks(job: PrepareJob, split: str) -> list[Sequence]:
    specs = shard_order(job, split)
    return [specs[i : i + job.shard_size] for i in range(0, len(specs), job.shard_size)]


def _convert(job: PrepareJob, stagings: dict[str, Staging], workers: int | None,
             address: str | None) -> dict[str, dict[int, dict]]:
    """Run every shard task not done yet; returns each split's records by shard index."""
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
    with ray_session(workers, address) as parallel, \
            tqdm(total=total, initial=done, desc="prepare " + ",".join(job.splits), unit="img",
                 dynamic_ncols=True) as bar, closing(run_tasks(iter(todo), job.convert, parallel)) as results:
        for task, record in results:
            if "error" in record:
                raise DataError(record["error"])
            nodes[task.split][record.pop("node")] += 1
            records[task.split][task.index] = record
            bar.update(len(task.specs))
    for split, used in nodes.items():
        if used:
            print(f"ray: split '{split}' converted in {sum(used.values())} tasks on {len(used)} node(s): "
                  + ", ".join(f"{node[:12]}={n}" for node, n in sorted(used.items())))
    return records


def split_record(job: PrepareJob, split: str, records: dict[int, dict], fp: str) -> dict:
    """The manifest entry of one split, summed from its shard records in shard order."""
    tally = Tally(len(job.classes))
    shards = []
    for index in sorted(records):
        tally.merge(Tally.from_json(len(job.classes), records[index]["tally"]))
        shards += records[index]["parts"]
    tally.skipped.update(job.unpaired)
    dropped: Counter = Counter()
    for spec in job.splits[split]:
        dropped.update(getattr(spec, "dropped", {}))
    mean, std = tally.mean_std()
    t = tally.to_json()
    details = t.pop("skipped_details")
    t.pop("channel_sum"), t.pop("channel_sumsq")
    return {**t, "shards": shards, "mean": mean, "std": std, "dropped_annotations": dict(sorted(dropped.items())),
            "skipped_examples": details, "source": job.source, "shard_size": job.shard_size,
            "shard_bytes": job.shard_bytes, "fingerprint": fp}


def _check_converted(splits: dict[str, dict]) -> None:
    for split, rec in splits.items():
        if rec["samples"] == 0:
            example = next(iter(rec["skipped_examples"]), None)
            raise DataError(f"split '{split}': no input could be converted; skipped: {rec['skipped']}"
                            + (f"; e.g. {example[2]}" if example else ""))


def _publish(out: Path, job: PrepareJob, manifest: dict | None, stagings: dict[str, Staging],
             splits: dict[str, dict]) -> dict:
    """Move every split's shards into place, then write dataset.json and remove the staging directories."""
    new = {"format": FORMAT, "segdist": __version__, "classes": job.classes, "num_classes": len(job.classes),
           "palette": job.palette, "ignore_index": job.ignore_index,
           "label_dtype": label_dtype(len(job.classes), job.ignore_index).__name__,
           "splits": dict(manifest["splits"]) if manifest else {}}
    new["splits"].update(splits)
    new["splits"] = dict(sorted(new["splits"].items()))
    stats_split = "train" if "train" in new["splits"] else next(iter(new["splits"]))
    new["mean"], new["std"] = new["splits"][stats_split]["mean"], new["splits"][stats_split]["std"]
    for staging in stagings.values():
        staging.mark_promoting()
    for split, staging in stagings.items():
        staging.move_into_place([part["name"] for part in splits[split]["shards"]])
    write_json_atomic(out / MANIFEST, new)
    for staging in stagings.values():
        staging.remove(with_others=True)
    return new
