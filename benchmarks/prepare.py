"""segdist prepare vs the hand-made pipeline it replaces, on the same synthetic COCO sets.

Baseline (as the prior reports built it): pycocotools' COCO loaded once, shared with a forked
multiprocessing.Pool over images; each worker opens the image with PIL, decodes every instance
with annToMask, ORs them into per-class masks, paints them in class order, writes a PNG mask and
copies the image file. With --per-class it draws the same images as segdist's --per-class.

segdist: `segdist prepare coco` with a freshly started local Ray (its start-up is included),
and again on a Ray cluster that is already up (warm, as with --address). All use the same
number of processes. Peak memory is the summed PSS (proportional set size, so pages shared
between forked processes count once) of the benchmark process and all its children (Ray's
raylet and workers, or the Pool workers), sampled every 50 ms, and split into the process that
runs the pipeline (segdist's driver, the script's parent) and its children.

Small files (--images): every image of synthetic files of 500 to 10,000 images converted; also
what Ray's start-up costs and the CPU time per image of one conversion, single-process.
Large file (--large DIR): the cost curve on a COCO-train2017-sized file (`segdist synth coco
--like-train2017 --images-for person,bicycle,car --out DIR`, written if missing: 450 MB of
JSON, ~66,000 JPEGs, 5 GB): the seed workload (2,000 per class of person, bicycle, car) and
2,000 / 10,000 / 50,000 person images; wall and CPU time, time to the first finished shard.

    python benchmarks/prepare.py                      # 500, 2000 and 10000 images, 2 processes
    python benchmarks/prepare.py --images 500 2000 --large /work/big/coco
    python benchmarks/prepare.py --images --large /work/big/coco --large-counts 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

CLASSES = ["person", "bicycle", "car"]
_coco = None


@dataclass(frozen=True)
class Workload:
    """What to convert: the images holding `classes`, or a seeded draw of `per_class` images per class."""

    root: Path
    classes: tuple[str, ...] = tuple(CLASSES)
    per_class: int | None = None

    @property
    def annotations(self) -> Path:
        return self.root / "annotations/instances_train.json"


def baseline_selection(coco, cat_ids: list[int], per_class: int | None, seed: int = 0) -> list[int]:
    """The image ids a hand-made script converts: all with a non-crowd instance, or N per class drawn as
    segdist's --per-class draws them (each class's sorted candidates, one seeded permutation after another)."""
    def holding(ids: list[int]) -> list[int]:
        return sorted({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=ids, iscrowd=False))})

    if per_class is None:
        return holding(cat_ids)
    rng, chosen = np.random.default_rng(seed), set()
    for cat_id in cat_ids:
        chosen.update(int(i) for i in rng.permutation(holding([cat_id]))[:per_class])
    return sorted(chosen)


def _baseline_one(job: tuple[int, str, str, list[int]]) -> bool:
    image_id, image_dir, out_dir, cat_ids = job
    info = _coco.loadImgs(image_id)[0]
    src = Path(image_dir) / info["file_name"]
    image = Image.open(src).convert("RGB")
    label = np.zeros((image.height, image.width), np.uint8)
    for value, cat_id in enumerate(cat_ids, 1):
        anns = _coco.loadAnns(_coco.getAnnIds(imgIds=image_id, catIds=[cat_id], iscrowd=None))
        if not anns:
            continue
        mask = np.zeros_like(label, dtype=bool)
        for ann in anns:
            mask |= _coco.annToMask(ann).astype(bool)
        label[mask] = value
    Image.fromarray(label).save(Path(out_dir) / "masks" / f"{src.stem}.png")
    shutil.copy(src, Path(out_dir) / "images" / src.name)
    return True


def run_baseline(work: Workload, out: Path, workers: int) -> int:
    """pycocotools' COCO loaded once and shared with the forked Pool workers (as a careful script does)."""
    global _coco
    from pycocotools.coco import COCO

    _coco = COCO(str(work.annotations))
    cat_ids = [_coco.getCatIds(catNms=[name])[0] for name in work.classes]
    ids = baseline_selection(_coco, cat_ids, work.per_class)
    (out / "masks").mkdir(parents=True)
    (out / "images").mkdir()
    with get_context("fork").Pool(workers) as pool:  # Linux's default; this process was itself spawned
        jobs = [(i, str(work.root / "train"), str(out), cat_ids) for i in ids]
        done = sum(pool.imap_unordered(_baseline_one, jobs, 8))
    return done


def run_segdist(work: Workload, out: Path, workers: int) -> int:
    """`segdist prepare coco`, starting its own local Ray cluster (start-up included)."""
    from segdist.cli import main
    from segdist.format.manifest import read_manifest

    per_class = ["--per-class", str(work.per_class)] if work.per_class else []
    main(["prepare", "coco", "--images", str(work.root / "train"), "--annotations", str(work.annotations),
          "--classes", ",".join(work.classes), *per_class, "--out", str(out), "--workers", str(workers)])
    return read_manifest(out)["splits"]["train"]["samples"]


def run_segdist_on_running_cluster(work: Workload, out: Path, workers: int) -> int:
    """The same, on a Ray cluster that is already up (as with --address): start-up excluded."""
    return run_segdist(work, out, workers)


def first_output(fn, out: Path) -> bool:  # noqa: ANN001 - one of the run_* functions
    """Whether a first shard is finished: segdist's first shard record, or 256 of the baseline's masks."""
    if fn is run_baseline:
        masks = out / "masks"
        return masks.is_dir() and sum(1 for _ in zip(range(256), os.scandir(masks))) == 256
    return any(out.glob(".train.*.partial/train-*.json"))


class PeakMemory:
    """Peak summed PSS of process `pid` and its descendants, of `pid` alone and of the others, in a thread.

    Also the CPU time the whole process tree used while sampled (user + system, each process's
    last sample minus its first; a process that ends between samples loses at most 50 ms), and
    the wall-clock time `first_done()` first held. On a shared machine CPU time is steadier than wall time.
    """

    def __init__(self, pid: int, first_done=lambda: False):  # noqa: ANN001 - a callable
        self.process, self.first_done = psutil.Process(pid), first_done

    def __enter__(self) -> "PeakMemory":
        self.peak, self.peak_self, self.peak_others, self._stop = 0, 0, 0, threading.Event()
        self.first_at: float | None = None
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        first_pass = True
        while not self._stop.is_set():
            total = own = 0
            try:
                family = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                family = []
            for p in family:
                try:
                    pss = p.memory_full_info().pss  # PSS: forked pages shared with the parent count once
                    cpu = sum(p.cpu_times()[:2])
                except psutil.Error:
                    continue
                self._cpu_first.setdefault(p.pid, cpu if first_pass else 0.0)  # later processes: all of it
                self._cpu_last[p.pid] = cpu
                total += pss
                own += pss if p.pid == self.process.pid else 0
            self.peak, self.peak_self = max(self.peak, total), max(self.peak_self, own)
            self.peak_others = max(self.peak_others, total - own)
            if self.first_at is None and self.first_done():
                self.first_at = time.time()
            first_pass = False
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(last - self._cpu_first[pid] for pid, last in self._cpu_last.items())


@dataclass
class Measured:
    images: int
    seconds: float
    peak_mib: float  # the whole process tree
    driver_mib: float  # the process that runs the pipeline (segdist's driver, the script's parent)
    others_mib: float  # its children: Ray's raylet, GCS and workers, or the Pool's workers
    cpu_seconds: float
    first_shard_s: float  # from the start to the first finished shard (segdist) or 256 masks (baseline)


def _timed(fn, work: Workload, out: Path, workers: int, conn) -> None:  # noqa: ANN001 - a run_* and a Pipe end
    """Runs in a fresh process: (optionally start Ray,) run one pipeline, send back (images, seconds, start)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if fn is run_segdist_on_running_cluster:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        ray.get([ray.remote(num_cpus=1)(lambda: None).remote() for _ in range(workers)])
        time.sleep(3)  # a cluster that is up: its processes done starting, its workers running
        conn.send("ready")
    started, start = time.time(), time.perf_counter()
    n = fn(work, out, workers)
    conn.send((n, time.perf_counter() - start, started))


def measure(fn, work: Workload, scratch: Path, workers: int) -> Measured:  # noqa: ANN001 - a run_* function
    """One run in a fresh process: memory left over from an earlier run (or from generating the data)
    is not counted, and nothing is shared between runs. The warm run starts its Ray cluster (and
    lets it settle) before the clock, the memory peak and the CPU time start.
    """
    import multiprocessing

    out = scratch / fn.__name__
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_timed, args=(fn, work, out, workers, child))
    process.start()
    if fn is run_segdist_on_running_cluster:
        assert parent.recv() == "ready"
    with PeakMemory(process.pid, lambda: first_output(fn, out)) as mem:
        n, seconds, started = parent.recv()
    process.join()
    shutil.rmtree(out)
    first = (mem.first_at - started) if mem.first_at else float("nan")
    return Measured(n, seconds, mem.peak / 2**20, mem.peak_self / 2**20, mem.peak_others / 2**20,
                    mem.cpu_seconds, first)


def ray_startup(workers: int) -> tuple[float, float]:
    """Seconds from nothing to a first task done on every worker (as prepare starts), and to shut down."""
    import ray

    from segdist.prepare.ray_cluster import ray_session

    @ray.remote(num_cpus=1)
    def first_task() -> None:
        import segdist.prepare.task  # noqa: F401 - what a shard task imports

    start = time.perf_counter()
    with ray_session(workers, None) as parallel:
        ray.get([first_task.remote() for _ in range(parallel)])
        ready = time.perf_counter()
    return ready - start, time.perf_counter() - ready


def _cpu_ms(fn, items: list, repeat: int = 3) -> float:
    """Best process time per item over `repeat` passes, in ms."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return best / len(items) * 1000


def conversion_profile(root: Path, work: Path, limit: int = 200) -> dict[str, float]:
    """CPU ms per image, single process: the baseline's worker function, segdist's shard task and its parts."""
    from functools import partial

    import cv2

    from segdist.prepare.sources.coco import annotation_file as coco_json, render as coco, select as coco_select
    from segdist.prepare.inputs import encode_png, read_image
    from segdist.prepare.task import ShardTask, label_counts, run_shard_task

    cv2.setNumThreads(1)  # as in a Ray worker with num_cpus=1
    data = coco_json.load_annotations(root / "annotations/instances_train.json")
    cats = coco_json.resolve_classes(CLASSES, data.categories)
    specs = coco_select.build_specs(data, root / "train", cats, crowd="ignore", keep_empty=False, per_class=None,
                                    seed=0)[0][:limit]
    opts = coco.CocoOptions(num_classes=len(CLASSES) + 1)
    labels = {s.key: coco.render_label(s, opts) for s in specs}
    (work / "profile" / "masks").mkdir(parents=True)
    (work / "profile" / "images").mkdir()
    global _coco
    from pycocotools.coco import COCO

    _coco = COCO(str(root / "annotations/instances_train.json"))
    cat_ids = [_coco.getCatIds(catNms=[name])[0] for name in CLASSES]
    task = ShardTask("train", 0, specs, work / "profile", len(CLASSES) + 1, 255, None)
    figures = {
        "baseline": _cpu_ms(
            lambda s: _baseline_one((s.image_id, str(root / "train"), str(work / "profile"), cat_ids)), specs),
        "segdist": _cpu_ms(lambda t: run_shard_task(t, partial(coco.convert, opts=opts)), [task]) / len(specs),
        "  read and check the image (JPEG at 1/2)": _cpu_ms(lambda s: read_image(Path(s.path)), specs),
        "  paint the label map": _cpu_ms(lambda s: coco.render_label(s, opts), specs),
        "  label PNG": _cpu_ms(lambda s: encode_png(labels[s.key]), specs),
        "  class pixel counts": _cpu_ms(lambda s: label_counts(labels[s.key], len(CLASSES) + 1, 255), specs),
    }
    shutil.rmtree(work / "profile")
    return figures


def small_files(sizes: list[int], workers: int, size: str) -> None:
    """The earlier figures: synthetic COCO files of `sizes` images, every image converted."""
    from segdist.synth.coco import write_synthetic_coco

    width, height = (int(v) for v in size.split("x"))
    runs = (run_baseline, run_segdist, run_segdist_on_running_cluster)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_images in sizes:
            root = Path(tmp) / f"coco{n_images}"
            write_synthetic_coco(root, n_images, val_images=1, seed=0, width=width, height=height)
            rows.append((n_images, [measure(fn, Workload(root), Path(tmp), workers) for fn in runs]))
        profile = conversion_profile(root, Path(tmp))
    startup, shutdown = ray_startup(workers)
    print(f"\nprepare benchmark: synthetic COCO {size}, classes {','.join(CLASSES)}, {workers} processes")
    print("segdist = fresh local Ray started by the command; warm = Ray cluster already running (--address)")
    print(f"{'images':>6} {'converted':>9} | {'img/s baseline':>14} {'segdist':>8} {'warm':>8} | "
          f"{'speed-up':>8} {'warm':>6} | {'peak MiB baseline':>17} {'segdist':>8} {'(driver)':>8} {'warm':>6} | "
          f"{'cold-warm s':>11}")
    for n_images, (b, c, w) in rows:
        assert b.images == c.images == w.images, f"all must convert the same images ({b}, {c}, {w})"
        print(f"{n_images:>6} {b.images:>9} | {b.images / b.seconds:>14.1f} {c.images / c.seconds:>8.1f} "
              f"{w.images / w.seconds:>8.1f} | {b.seconds / c.seconds:>7.2f}x {b.seconds / w.seconds:>5.2f}x | "
              f"{b.peak_mib:>17.0f} {c.peak_mib:>8.0f} {c.driver_mib:>8.0f} {w.peak_mib:>6.0f} | "
              f"{c.seconds - w.seconds:>11.2f}")
    print("CPU time of the whole process tree (Ray's processes included), ms per image, and baseline / segdist:")
    print(f"{'images':>6} | {'baseline':>8} {'segdist':>8} {'warm':>8} | {'ratio':>6} {'warm':>6}")
    for n_images, (b, c, w) in rows:
        print(f"{n_images:>6} | {b.cpu_seconds / b.images * 1000:>8.2f} {c.cpu_seconds / b.images * 1000:>8.2f} "
              f"{w.cpu_seconds / b.images * 1000:>8.2f} | {b.cpu_seconds / c.cpu_seconds:>5.2f}x "
              f"{b.cpu_seconds / w.cpu_seconds:>5.2f}x")
    print(f"Ray start-up (local cluster up, a first task done on each of {workers} workers): {startup:.2f} s; "
          f"shutdown {shutdown:.2f} s")
    print("CPU per image, one process (ms):")
    for name, ms in profile.items():
        print(f"  {name:<42} {ms:6.2f}")
    print(f"  {'segdist / baseline':<42} {profile['segdist'] / profile['baseline']:6.2f}")


def _parse_one(how: str, ann_file: Path, conn) -> None:  # noqa: ANN001 - a Pipe end
    """In a fresh process: read the file one way; send back (seconds, peak RSS in MiB)."""
    import resource

    from segdist.prepare.sources.coco import annotation_file as coco_json, select as coco_select

    start = time.perf_counter()
    if how == "pycocotools COCO()":
        from pycocotools.coco import COCO

        COCO(str(ann_file))
    elif how == "json.load + Python check":
        coco_json.read_json_checked(ann_file)
    else:
        data = coco_json.load_annotations(ann_file)
        if how != "msgspec (segdist)":
            cats = coco_json.resolve_classes(CLASSES, data.categories)
            coco_select.build_specs(data, ann_file.parent, cats, crowd="ignore", keep_empty=False, per_class=2000,
                                    seed=0)
    conn.send((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def parse_figures(ann_file: Path) -> None:
    """Reading and checking the annotation file alone, each way in a fresh process."""
    import multiprocessing

    print(f"\nreading {ann_file} ({ann_file.stat().st_size / 1e6:.0f} MB), one process, fresh each time:")
    for how in ("pycocotools COCO()", "json.load + Python check", "msgspec (segdist)",
                "msgspec + seed draw (2000 x 3)"):
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.get_context("spawn").Process(target=_parse_one, args=(how, ann_file, child))
        process.start()
        seconds, peak = parent.recv()
        process.join()
        print(f"  {how:<32} {seconds:6.1f} s  peak RSS {peak:6.0f} MiB")


def large_file(root: Path, counts: list[int], workers: int, scratch: Path) -> None:
    """The cost curve on a COCO-train2017-sized file: the seed workload, then `counts` person images."""
    if not (root / "annotations/instances_train.json").exists():
        from segdist.synth.coco_large import write_coco_like_train2017

        write_coco_like_train2017(root, images_for=CLASSES)
    workloads = [("seed: 2000 per class x 3", Workload(root, tuple(CLASSES), 2000))]
    workloads += [(f"{n} person images", Workload(root, ("person",), n)) for n in counts]
    runs = (run_baseline, run_segdist, run_segdist_on_running_cluster)
    parse_figures(root / "annotations/instances_train.json")
    rows = [(name, [measure(fn, work, scratch, workers) for fn in runs]) for name, work in workloads]
    size = (root / "annotations/instances_train.json").stat().st_size / 1e6
    print(f"\nprepare on a COCO-train2017-sized file ({size:.0f} MB, {root}), {workers} processes; "
          "cold = segdist starting its local Ray, warm = a Ray cluster already up")
    print(f"{'workload':<26} {'images':>6} | {'wall s base':>11} {'cold':>6} {'warm':>6} | {'x cold':>6} "
          f"{'x warm':>6} | {'img/s cold':>10} {'warm':>6} | {'CPU s base':>10} {'cold':>6} {'warm':>6} | "
          f"{'1st shard s base':>16} {'cold':>5} {'warm':>5}")
    for name, (b, c, w) in rows:
        assert b.images == c.images == w.images, f"{name}: all must convert the same images ({b}, {c}, {w})"
        print(f"{name:<26} {b.images:>6} | {b.seconds:>11.1f} {c.seconds:>6.1f} {w.seconds:>6.1f} | "
              f"{b.seconds / c.seconds:>5.2f}x {b.seconds / w.seconds:>5.2f}x | {c.images / c.seconds:>10.1f} "
              f"{w.images / w.seconds:>6.1f} | {b.cpu_seconds:>10.1f} {c.cpu_seconds:>6.1f} {w.cpu_seconds:>6.1f} | "
              f"{b.first_shard_s:>16.1f} {c.first_shard_s:>5.1f} {w.first_shard_s:>5.1f}")
    print("peak memory (MiB, PSS): baseline script (its parent | Pool workers), segdist cold and warm "
          "(driver | Ray's processes)")
    print(f"{'workload':<26} | {'base parent':>11} {'workers':>7} | {'cold driver':>11} {'Ray':>6} | "
          f"{'warm driver':>11} {'Ray':>6} | {'driver / base':>13}")
    for name, (b, c, w) in rows:
        print(f"{name:<26} | {b.driver_mib:>11.0f} {b.others_mib:>7.0f} | {c.driver_mib:>11.0f} "
              f"{c.others_mib:>6.0f} | {w.driver_mib:>11.0f} {w.others_mib:>6.0f} | "
              f"{c.driver_mib / b.peak_mib:>12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="*", default=[500, 2000, 10000],
                        help="sizes of the small synthetic files (every image converted); none to skip")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--large", type=Path, default=None, metavar="DIR",
                        help="also the cost curve on a train2017-sized file in DIR (written there if missing)")
    parser.add_argument("--large-counts", type=int, nargs="*", default=[2000, 10000, 50000])
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.images:
        small_files(args.images, args.workers, args.size)
    if args.large:
        with tempfile.TemporaryDirectory(dir=args.large) as scratch:
            large_file(args.large, args.large_counts, args.workers, Path(scratch))
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
