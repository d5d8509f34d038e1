"""Ray fan-out, WebDataset shard writer and the dataset.json manifest.

Workers convert chunks of inputs in parallel; the driver receives the results in input order
and writes `<split>-%06d.tar` shards. Shard contents therefore depend only on the inputs and
options, never on the number of workers. Each shard is written under a temporary name and
renamed when complete; a progress file lets an interrupted run finish the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from segdist import __version__
from segdist.manifest import MANIFEST, read_manifest, write_json_atomic
from segdist.sources.common import DataError, Sample, SkipSample, encode_png

CHUNK = 8  # inputs per Ray task: small enough to balance load, large enough to amortise overhead


@dataclass
class Encoded:
    """A converted sample, ready for the tar file, plus its statistics."""

    key: str
    files: dict[str, bytes]
    class_pixels: np.ndarray
    ignore_pixels: int
    channel_sum: np.ndarray
    channel_sumsq: np.ndarray
    pixels: int

    @property
    def nbytes(self) -> int:
        """Bytes this sample takes in a tar file: a 512-byte header per member plus padded data."""
        return sum(512 + -(-len(v) // 512) * 512 for v in self.files.values())


@dataclass
class Tally:
    """Running statistics of a shard or a split; sums of shards give the split."""

    num_classes: int
    samples: int = 0
    class_pixels: np.ndarray = None
    class_images: np.ndarray = None
    class_image_pixels: np.ndarray = None
    ignore_pixels: int = 0
    pixels: int = 0
    channel_sum: np.ndarray = None
    channel_sumsq: np.ndarray = None
    skipped: Counter = field(default_factory=Counter)
    skipped_details: list = field(default_factory=list)

    def __post_init__(self) -> None:
        c = self.num_classes
        for name, size in (("class_pixels", c), ("class_images", c), ("class_image_pixels", c)):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(size, np.int64))
        if self.channel_sum is None:
            self.channel_sum = np.zeros(3, np.float64)
            self.channel_sumsq = np.zeros(3, np.float64)

    def add(self, s: Encoded) -> None:
        present = s.class_pixels > 0
        labelled = int(s.class_pixels.sum())
        self.samples += 1
        self.class_pixels += s.class_pixels
        self.class_images += present
        self.class_image_pixels += present * labelled
        self.ignore_pixels += s.ignore_pixels
        self.pixels += s.pixels
        self.channel_sum += s.channel_sum
        self.channel_sumsq += s.channel_sumsq

    def merge(self, other: "Tally") -> None:
        for name in ("samples", "ignore_pixels", "pixels"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("class_pixels", "class_images", "class_image_pixels", "channel_sum", "channel_sumsq"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.skipped.update(other.skipped)
        self.skipped_details += other.skipped_details

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "class_pixels": self.class_pixels.tolist(),
            "class_images": self.class_images.tolist(),
            "class_image_pixels": self.class_image_pixels.tolist(),
            "ignore_pixels": self.ignore_pixels,
            "pixels": self.pixels,
            "channel_sum": self.channel_sum.tolist(),
            "channel_sumsq": self.channel_sumsq.tolist(),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_details": self.skipped_details,
        }

    @classmethod
    def from_json(cls, num_classes: int, d: dict) -> "Tally":
        arrays = {k: np.array(d[k], np.int64) for k in ("class_pixels", "class_images", "class_image_pixels")}
        floats = {k: np.array(d[k], np.float64) for k in ("channel_sum", "channel_sumsq")}
        return cls(
            num_classes, d["samples"], **arrays, ignore_pixels=d["ignore_pixels"], pixels=d["pixels"],
            **floats, skipped=Counter(d["skipped"]), skipped_details=list(d["skipped_details"]),
        )

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Channel mean and std of the images, in the 0..1 scale albumentations' Normalize uses."""
        if not self.pixels:
            return [0.0] * 3, [0.0] * 3
        mean = self.channel_sum / self.pixels
        std = np.sqrt(np.maximum(self.channel_sumsq / self.pixels - mean**2, 0))
        return [round(float(v) / 255, 6) for v in mean], [round(float(v) / 255, 6) for v in std]


def encode_sample(s: Sample, num_classes: int, ignore_index: int) -> Encoded:
    """Label PNG, per-sample json and statistics of one converted sample."""
    h, w = s.label.shape
    if s.label.dtype == np.uint8 and s.label.size < 2**24:  # float32 counts are exact below 2**24
        # OpenCV's histogram is ~2x faster than np.bincount here.
        counts = cv2.calcHist([s.label], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        counts = np.bincount(s.label.ravel(), minlength=max(num_classes, ignore_index + 1))
    class_pixels = counts[:num_classes].astype(np.int64)
    ignore_pixels = int(counts[ignore_index])
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


def convert_chunk(convert: Callable[[object], Sample], specs: Sequence, num_classes: int,
                  ignore_index: int) -> tuple[str, list]:
    """Runs in a Ray worker: convert inputs, turning bad ones into ("skip", ...) records.

    Returns the Ray node it ran on with the results, so the driver can report where work went.
    """
    import ray

    results = []
    for spec in specs:
        try:
            results.append(("sample", encode_sample(convert(spec), num_classes, ignore_index)))
        except SkipSample as exc:
            results.append(("skip", getattr(spec, "key", "?"), exc.reason, exc.detail))
        except DataError as exc:
            results.append(("error", str(exc)))
            break
    return ray.get_runtime_context().get_node_id(), results


@contextmanager
def ray_session(workers: int | None, address: str | None) -> Iterator[int]:
    """Start local Ray (or join the cluster at `address`); yield how many tasks to run at once."""
    import ray

    if ray.is_initialized():  # a caller (a test session, a notebook) already holds a Ray cluster
        yield workers or int(ray.cluster_resources().get("CPU", 1))
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local-only cluster
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        yield workers or int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def ordered_results(convert: Callable, specs: Sequence, workers: int, num_classes: int, ignore_index: int,
                    nodes: Counter | None = None) -> Iterator:
    """Results of all inputs, in input order, with at most 2 x workers chunks in flight.

    `nodes` counts the chunks each Ray node converted.
    """
    import ray

    remote = ray.remote(num_cpus=1)(convert_chunk)
    convert_ref = ray.put(convert)
    chunks = (specs[i : i + CHUNK] for i in range(0, len(specs), CHUNK))
    pending: deque = deque()

    def next_results() -> list:
        node, results = ray.get(pending.popleft())
        if nodes is not None:
            nodes[node] += 1
        return results

    for chunk in chunks:
        pending.append(remote.remote(convert_ref, chunk, num_classes, ignore_index))
        if len(pending) >= 2 * workers:
            yield from next_results()
    while pending:
        yield from next_results()


class ShardWriter:
    """Writes `<split>-%06d.tar` under temporary names, renaming each when complete."""

    def __init__(self, out: Path, split: str, first_index: int, max_samples: int, max_bytes: int | None):
        self.out, self.split = out, split
        self.index = first_index
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.tar = None
        self.samples = self.bytes = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"

    def is_full_for(self, sample: Encoded) -> bool:
        if self.samples == 0:
            return False
        if self.samples >= self.max_samples:
            return True
        return self.max_bytes is not None and self.bytes + sample.nbytes > self.max_bytes

    def write(self, sample: Encoded) -> None:
        if self.tar is None:
            import webdataset as wds  # imports torch: kept off the Ray workers, which never write

            self.stream = open(self.out / f".{self.name}.tmp", "wb")
            self.tar = wds.TarWriter(self.stream, encoder=False, mtime=0)
        self.tar.write({"__key__": sample.key, **sample.files})
        self.samples += 1
        self.bytes += sample.nbytes

    def close(self) -> dict | None:
        """Finish the current shard; returns its record, or None if it held no sample."""
        if self.tar is None:
            return None
        self.tar.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.out / f".{self.name}.tmp", self.out / self.name)
        record = {"name": self.name, "samples": self.samples, "bytes": (self.out / self.name).stat().st_size}
        self.tar, self.samples, self.bytes = None, 0, 0
        self.index += 1
        return record

    def abort(self) -> None:
        """Drop the unfinished shard."""
        if self.tar is not None:
            self.tar.close()
            self.stream.close()
            (self.out / f".{self.name}.tmp").unlink(missing_ok=True)


def fingerprint(split: str, source: dict, specs: Sequence, shard_size: int, shard_bytes: int | None) -> str:
    h = hashlib.sha256(json.dumps([split, source, shard_size, shard_bytes], sort_keys=True, default=str).encode())
    for spec in specs:
        h.update(spec.key.encode() + b"\0")
    return h.hexdigest()[:16]


def _progress_path(out: Path, split: str) -> Path:
    return out / f".{split}.progress.json"


def _prepare_target(out: Path, split: str, manifest: dict | None, fp: str, overwrite: bool) -> list[dict]:
    """Check what `out` already holds for `split`; returns completed-shard records to resume from."""
    progress_file = _progress_path(out, split)
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else None
    existing = sorted(out.glob(f"{split}-*.tar")) if out.exists() else []
    if overwrite:
        for path in [*existing, *out.glob(f".{split}-*.tar.tmp"), progress_file]:
            path.unlink(missing_ok=True)
        return []
    if manifest and split in manifest["splits"]:
        raise DataError(f"{out} already holds split '{split}' ({MANIFEST}); pass --overwrite to replace it")
    if progress is not None:
        if progress["fingerprint"] != fp:
            raise DataError(
                f"{out} holds an interrupted run of split '{split}' with other inputs or options; "
                "rerun it with the same ones to finish it, or pass --overwrite"
            )
        return progress["shards"]
    if existing:
        raise DataError(f"{out} already holds {existing[0].name} and others; pass --overwrite to replace them")
    return []


def write_split(
    out: Path, split: str, specs: Sequence, convert: Callable, done: list[dict], fp: str, *,
    num_classes: int, ignore_index: int, workers: int, shard_size: int, shard_bytes: int | None,
) -> tuple[list[dict], Tally]:
    """Convert and write one split, resuming after the shards in `done`; returns shards and tally."""
    tally = Tally(num_classes)
    for record in done:
        tally.merge(Tally.from_json(num_classes, record["tally"]))
    start = done[-1]["inputs_end"] if done else 0
    shards = [r for r in done if r["name"]]
    writer = ShardWriter(out, split, len(shards), shard_size, shard_bytes)
    current = Tally(num_classes)

    def close_shard(inputs_end: int) -> None:
        nonlocal current
        record = writer.close()
        done.append({"name": record and record["name"], "samples": record and record["samples"],
                     "bytes": record and record["bytes"], "inputs_end": inputs_end, "tally": current.to_json()})
        if record:
            shards.append(done[-1])
        tally.merge(current)
        current = Tally(num_classes)
        write_json_atomic(_progress_path(out, split), {"fingerprint": fp, "shards": done})

    nodes: Counter = Counter()
    results = ordered_results(convert, specs[start:], workers, num_classes, ignore_index, nodes)
    bar = tqdm(total=len(specs), initial=start, desc=f"prepare {split}", unit="img", dynamic_ncols=True)
    try:
        for index, result in enumerate(results, start):
            kind = result[0]
            if kind == "error":
                raise DataError(result[1])
            if kind == "skip":
                current.skipped[result[2]] += 1
                current.skipped_details.append([result[1], result[2], result[3]])
            else:
                if writer.is_full_for(result[1]):
                    close_shard(index)
                writer.write(result[1])
                current.add(result[1])
            bar.update(1)
        close_shard(len(specs))
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    if nodes:
        print(f"ray: split '{split}' converted in {sum(nodes.values())} tasks on {len(nodes)} node(s): "
              + ", ".join(f"{node[:12]}={n}" for node, n in sorted(nodes.items())))
    return [{k: r[k] for k in ("name", "samples", "bytes")} for r in shards], tally


def split_record(shards: list[dict], tally: Tally, source: dict, specs: Sequence) -> dict:
    """The manifest entry of one split."""
    dropped: Counter = Counter()
    for spec in specs:
        dropped.update(getattr(spec, "dropped", {}))
    t = tally.to_json()
    mean, std = tally.mean_std()
    details = t.pop("skipped_details")
    t.pop("channel_sum"), t.pop("channel_sumsq")
    return {
        **t,
        "shards": shards,
        "mean": mean,
        "std": std,
        "dropped_annotations": dict(sorted(dropped.items())),
        "skipped_examples": details[:50],
        "source": source,
    }


def write_dataset(
    out: Path,
    splits: dict[str, list],
    convert: Callable,
    *,
    classes: list[str],
    palette: list[list[int]],
    ignore_index: int,
    source: dict,
    workers: int | None = None,
    address: str | None = None,
    shard_size: int = 256,
    shard_bytes: int | None = None,
    overwrite: bool = False,
    unpaired: Counter | None = None,
) -> dict:
    """Convert every split into shards and record it in dataset.json; returns the manifest."""
    if not any(splits.values()):
        raise DataError("nothing selected: no input matches the given classes and options; nothing was written")
    if shard_size < 1:
        raise DataError("--shard-size must be at least 1")
    manifest = read_manifest(out) if (out / MANIFEST).exists() else None
    if manifest and not overwrite and (manifest["classes"] != classes or manifest["ignore_index"] != ignore_index):
        raise DataError(f"{out / MANIFEST} lists classes {manifest['classes']}; this run has {classes}")
    plans = {}
    for split, specs in splits.items():
        keys = [s.key for s in specs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise DataError(f"two inputs of split '{split}' map to the same key '{dup}'")
        fp = fingerprint(split, source, specs, shard_size, shard_bytes)
        plans[split] = (specs, fp, _prepare_target(out, split, manifest, fp, overwrite))
    with _removed_if_left_empty(out):
        return _write_plans(out, plans, convert, manifest, classes, palette, ignore_index, source, workers,
                            address, shard_size, shard_bytes, overwrite, unpaired)


@contextmanager
def _removed_if_left_empty(out: Path) -> Iterator[None]:
    """Create `out`; if this run created it and fails before writing anything, remove it again."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def _write_plans(out, plans, convert, manifest, classes, palette, ignore_index, source, workers, address,
                 shard_size, shard_bytes, overwrite, unpaired) -> dict:  # noqa: ANN001 - see write_dataset
    if manifest is None or overwrite:
        manifest = {"format": "segdist-shards/1", "segdist": __version__, "classes": classes,
                    "num_classes": len(classes), "palette": palette, "ignore_index": ignore_index,
                    "splits": {} if manifest is None else manifest["splits"]}
    with ray_session(workers, address) as parallel:
        for split, (specs, fp, done) in plans.items():
            shards, tally = write_split(
                out, split, specs, convert, done, fp, num_classes=len(classes), ignore_index=ignore_index,
                workers=parallel, shard_size=shard_size, shard_bytes=shard_bytes,
            )
            if tally.samples == 0:
                _progress_path(out, split).unlink()
                raise DataError(f"split '{split}': no input could be converted; skipped: {dict(tally.skipped)}")
            if unpaired:
                tally.skipped.update(unpaired)
            record = split_record(shards, tally, source, specs)
            manifest["splits"][split] = record
            stats_split = "train" if "train" in manifest["splits"] else next(iter(manifest["splits"]))
            manifest["mean"] = manifest["splits"][stats_split]["mean"]
            manifest["std"] = manifest["splits"][stats_split]["std"]
            manifest["splits"] = dict(sorted(manifest["splits"].items()))
            write_json_atomic(out / MANIFEST, manifest)
            _progress_path(out, split).unlink()
    return manifest
