"""`segdist predict --ray`: the same predictions as a Ray Data pipeline, for clusters that run Ray rather than SLURM.

    files_to_do(inputs)            the driver: the file inputs already done are counted, never read
    -> from_items -> map(decode)   CPU tasks: read, skip the samples already done, decode and resize
    -> map_batches(Replica)        an actor pool, the run loaded once per actor: predict each image
                                   alone, write its files (Destination)
    -> iter_rows()                 the driver: one outcome per input (written, done, unnamed, unreadable)

The stages reuse the plain predict's code (reading.InputImages.load, driver.predict_batch, the
outputs and the destination), so the files are the same, byte for byte where the replicas compute
as the plain predict's process does (on CPUs: the same threads, `--cpus-per-replica`). A replica
takes one GPU where the cluster has GPUs, else `--cpus-per-replica` CPUs; the pool holds
`--replicas` of them (default: one per GPU, or as many as leave one CPU to the decode tasks).
`--address` joins a running cluster (whose nodes must reach the run directory and the inputs under
the same paths); without it a private local cluster is started and shut down at the end. The
progress is Ray Data's own (rows per operator); the summary is the plain predict's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from segdist.data.tar_reader import Reader
from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import check_cityscapes_dataset
from segdist.evaluation.predict import listed
from segdist.evaluation.predict.destination import Destination
from segdist.evaluation.predict.driver import predict_batch
from segdist.evaluation.predict.inputs import FileInput, Input, SampleInput
from segdist.evaluation.predict.outputs import OutputPlan
from segdist.evaluation.predict.reading import InputImages, Loaded
from segdist.evaluation.predict.summary import Tally, report_whole
from segdist.models.inference import TTA, check_mode
from segdist.runs.run import Run, load_run

# A decode task mostly waits on its read (a disk, S3) or runs OpenCV without the GIL: two share a core. Resources
# unlike a replica's also keep decoding a stage of its own: Ray Data fuses a task stage into the actor stage after
# it when their resources are equal (--cpus-per-replica 0.5: correct, only slower), and the actors would then
# read while their model waits.
DECODE_CPUS = 0.5
# the columns of the decoded rows; a row that holds no pixels carries empty arrays (a column keeps one ndim)
NO_RGB, NO_IMAGE = np.zeros((0, 0, 3), np.uint8), np.zeros((3, 0, 0), np.uint8)


def predict_on_ray(run_dir: str | Path, inputs: str | None, out: str | Path, *, checkpoint: str | None = None,
                   mode: str = "whole", crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                   tta: TTA | None = None, batch_size: int = 4, output_format: str = "segdist",
                   max_pixels: int | None = None, outputs: Sequence[str] | str | None = None,
                   probs_dtype: str = "uint8", overwrite: bool = False, shards: str | None = None,
                   split: str | None = None, address: str | None = None, replicas: int | None = None,
                   cpus_per_replica: float = 1) -> dict:
    """`predict` (same arguments, same files, same return value) on the Ray cluster at `address` or a local one.

    `replicas` model replicas (default: as many as fit), each on one GPU or on `cpus_per_replica` CPUs.
    """
    from segdist.prepare.ray_cluster import ray_session  # Ray is imported by this path only (pyproject.toml)

    check_mode(mode, crop, stride)
    if cpus_per_replica <= 0 or (replicas is not None and replicas < 1):
        raise DataError("--cpus-per-replica and --replicas take positive numbers")
    plan = OutputPlan.of(output_format, outputs, probs_dtype)
    destination = Destination(out, plan.folders)
    run = load_run(run_dir, checkpoint)
    tta = run.tta(tta)
    if output_format == "cityscapes":
        check_cityscapes_dataset(run.manifest, run.dir / "dataset.json")
    items = listed(inputs, shards, split, output_format)
    destination.prepare(main=True)
    existing = set() if overwrite else destination.existing()
    images = InputImages([], plan, existing, Reader.from_config(run.config.data), run.eval_size, run.resize_side,
                         max_pixels or run.config.data.max_pixels)
    options = {"mode": mode, "crop": crop, "stride": stride, "tta": tta}
    todo, tally = files_to_do(items, images)
    if not todo:  # a finished job's rerun: no cluster, no replica
        return report_whole(tally, plan, str(out), len(items), 0)
    try:
        with ray_session(None, address):
            size, resources = replica_pool(replicas, cpus_per_replica)
            print(f"predicting {len(todo)} image(s) with {run.checkpoint} on {size} Ray replica(s) "
                  f"({resources_text(resources)} each), mode {mode}, TTA {tta}, "
                  f"precision {run.config.train.mixed_precision}", flush=True)
            pipeline = decoded_rows(todo, images).map_batches(
                Replica, batch_size=batch_size, batch_format="numpy", compute=actor_pool(size),
                fn_constructor_kwargs=replica_kwargs(run, plan, destination, options, cpus_per_replica), **resources)
            collected(pipeline.iter_rows(), tally)
    finally:
        destination.close()
    return report_whole(tally, plan, str(out), len(items), size)


def files_to_do(items: list[Input], images: InputImages) -> tuple[list[Input], Tally]:
    """The inputs for the pipeline, and the tally of the file inputs counted here, unread: those whose files
    are all in --out, or that the format cannot name. A split's samples go on: only their key names them."""
    todo, tally = [], Tally()
    for item in items:
        if isinstance(item, FileInput) and not (loaded := images.to_write(item.where, item.name)).files:
            tally.count(loaded)
        else:
            todo.append(item)
    return todo, tally


def replica_pool(replicas: int | None, cpus_per_replica: float) -> tuple[int, dict]:
    """The pool's size and each replica's resources: one GPU where the cluster has GPUs, else CPUs."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), cluster.get("CPU", 1)
    if gpus:
        return replicas or gpus, {"num_gpus": 1, "num_cpus": cpus_per_replica}
    # one CPU stays with the decode tasks: a pool holding every CPU would starve them and the pool with them
    return replicas or max(1, int((cpus - 1) // cpus_per_replica)), {"num_cpus": cpus_per_replica}


def replica_kwargs(run: Run, plan: OutputPlan, destination: Destination, options: dict, cpus: float) -> dict:
    """What each Replica is made from: the checkpoint the driver chose and --out, as absolute paths (a worker
    may start elsewhere), and its torch threads."""
    out = destination.out if destination.remote else str(Path(destination.url("")).resolve())
    return {"run_dir": str(Path(run.dir).resolve()), "checkpoint": str(Path(run.checkpoint).parent.resolve()),
            "plan": plan, "out": out, "options": options, "threads": max(1, int(cpus))}


def resources_text(resources: dict) -> str:
    """{"num_gpus": 1, "num_cpus": 2} -> "1 GPU, 2 CPU"."""
    return ", ".join(f"{amount:g} {key.removeprefix('num_').removesuffix('s').upper()}"
                     for key, amount in resources.items())


def actor_pool(size: int):  # noqa: ANN201 - a ray.data.ActorPoolStrategy
    import ray.data

    return ray.data.ActorPoolStrategy(size=size)


def decoded_rows(items: list[Input], images: InputImages):  # noqa: ANN201 - a ray.data.Dataset
    """The inputs as a dataset, read and decoded by CPU tasks."""
    import ray.data

    rows = ray.data.from_items([dataclasses.asdict(item) for item in items])
    return rows.map(decode, fn_kwargs={"images": images}, num_cpus=DECODE_CPUS)


def decode(row: dict, images: InputImages) -> dict:
    """A decode task: one input row -> its Loaded as a row (the pixels as arrays, the files still to write)."""
    loaded = images.load(input_of(row))
    # "" for None: a column of strings and None can come back as NaN (through pandas)
    return {"where": loaded.where, "name": loaded.name or "", "files": ",".join(loaded.files),
            "unnamed": loaded.unnamed, "error": loaded.error or "",
            "rgb": NO_RGB if loaded.rgb is None else loaded.rgb,
            "image": NO_IMAGE if loaded.image is None else loaded.image.numpy()}


def input_of(row: dict) -> Input:
    """The FileInput or SampleInput a row was made from (dataclasses.asdict), with Python types again."""
    if "url" in row:
        return FileInput(str(row["url"]), str(row["name"]))
    end = row["end"]  # None: to the shard's end (a null of the column; NaN where it passes through pandas)
    return SampleInput(str(row["shard"]), int(row["index"]), int(row["start"]),
                       None if end is None or end != end else int(end), bool(row["exact"]))


def loaded_of(row: dict, plan: OutputPlan) -> Loaded:
    """A decoded row as reading.Loaded again."""
    name, wanted = str(row["name"]) or None, [output for output in str(row["files"]).split(",") if output]
    paths = plan.files(name) if wanted else {}
    pixels = row["image"].size > 0
    return Loaded(str(row["where"]), name, {output: paths[output] for output in wanted}, bool(row["unnamed"]),
                  row["rgb"] if pixels else None, torch.from_numpy(np.ascontiguousarray(row["image"])) if pixels
                  else None, str(row["error"]) or None)


class Replica:
    """One model replica of the actor pool: the run loaded once, each image predicted alone and its files written."""

    def __init__(self, run_dir: str, checkpoint: str, plan: OutputPlan, out: str, options: dict, threads: int):
        # the CPU threads decide the float rounding (oneDNN), so a replica matches a process with as many
        torch.set_num_threads(threads)
        self.run = load_run(run_dir, checkpoint)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        self.plan, self.options = plan, options
        self.destination = Destination(out, plan.folders)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        items = [loaded_of(row, self.plan) for row in batch_rows(batch)]
        tally = Tally()
        predict_batch(self.run, items, self.plan, self.destination, self.device, self.options, tally)
        return outcome_columns(tally)

    def __del__(self) -> None:
        self.destination.close()


def batch_rows(batch: dict[str, np.ndarray]) -> Iterator[dict]:
    """The rows of a numpy-format batch."""
    columns = list(batch)
    for i in range(len(batch[columns[0]])):
        yield {column: batch[column][i] for column in columns}


def outcome_columns(tally: Tally) -> dict[str, list]:
    """One row per input of a batch: where it is, what became of it, and why (unreadable)."""
    rows = ([(where, "written", "") for where in tally.written] + [(where, "done", "") for where in tally.done]
            + [(where, "unnamed", "") for where in tally.unnamed]
            + [(where, "unreadable", why) for where, why in tally.unreadable])
    return {"where": [r[0] for r in rows], "outcome": [r[1] for r in rows], "reason": [r[2] for r in rows]}


def collected(rows: Iterator[dict], tally: Tally) -> None:
    """Add the outcome rows to `tally`, then sort its lists (the rows come in any order)."""
    for row in rows:
        outcome, where = row["outcome"], str(row["where"])
        if outcome == "unreadable":
            tally.unreadable.append((where, str(row["reason"])))
        else:
            {"written": tally.written, "done": tally.done, "unnamed": tally.unnamed}[outcome].append(where)
    for found in (tally.written, tally.done, tally.unnamed, tally.unreadable):
        found.sort()
