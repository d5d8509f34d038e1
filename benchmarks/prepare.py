"""segdist prepare vs the hand-made pipeline it replaces, on the same synthetic COCO set.

Baseline (as the prior reports built it): a multiprocessing.Pool over images; each worker opens
the image with PIL, decodes every instance with pycocotools' annToMask, ORs them into per-class
masks, paints them in class order, writes a PNG mask and copies the image file.

segdist: `segdist prepare coco` with a freshly started local Ray (its start-up is included),
and again on a Ray cluster that is already up (warm, as with --address). All use the same
number of processes. Peak memory is the summed PSS (proportional set size, so pages shared
between forked processes count once) of the benchmark process and all its children (Ray's
raylet and workers, or the Pool workers), sampled every 50 ms.

Also printed: what Ray's start-up costs (segdist's ray_session up to a first task on every
worker, and its shutdown), and the CPU time per image of one conversion, single-process, with
segdist's parts (process time, so other load on the machine barely changes it).

    python benchmarks/prepare.py                      # 500, 2000 and 10000 images, 2 processes
    python benchmarks/prepare.py --images 500 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

CLASSES = ["person", "bicycle", "car"]
_coco = None


def _init_baseline(ann_file: str) -> None:
    global _coco
    from pycocotools.coco import COCO

    _coco = COCO(ann_file)


def _baseline_one(job: tuple[int, str, str]) -> bool:
    image_id, image_dir, out_dir = job
    info = _coco.loadImgs(image_id)[0]
    src = Path(image_dir) / info["file_name"]
    image = Image.open(src).convert("RGB")
    label = np.zeros((image.height, image.width), np.uint8)
    for value, cat_id in enumerate(_coco.getCatIds(catNms=CLASSES), 1):
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


def run_baseline(root: Path, out: Path, workers: int) -> int:
    from pycocotools.coco import COCO

    ann_file = str(root / "annotations/instances_train.json")
    coco = COCO(ann_file)
    cat_ids = coco.getCatIds(catNms=CLASSES)
    ids = sorted({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=cat_ids, iscrowd=False))})
    (out / "masks").mkdir(parents=True)
    (out / "images").mkdir()
    with Pool(workers, initializer=_init_baseline, initargs=(ann_file,)) as pool:
        done = sum(pool.imap_unordered(_baseline_one, [(i, str(root / "train"), str(out)) for i in ids], 8))
    return done


def run_segdist(root: Path, out: Path, workers: int) -> int:
    """`segdist prepare coco`, starting its own local Ray cluster (start-up included)."""
    from segdist.cli import main
    from segdist.format.manifest import read_manifest

    main(["prepare", "coco", "--images", str(root / "train"), "--annotations",
          str(root / "annotations/instances_train.json"), "--classes", ",".join(CLASSES),
          "--out", str(out), "--workers", str(workers)])
    return read_manifest(out)["splits"]["train"]["samples"]


def run_segdist_on_running_cluster(root: Path, out: Path, workers: int) -> int:
    """The same, on a Ray cluster that is already up (as with --address): start-up excluded."""
    return run_segdist(root, out, workers)


class PeakMemory:
    """Peak summed PSS of process `pid` and its descendants, and of `pid` alone, sampled in a thread.

    Also the CPU time the whole process tree used while sampled (user + system, each process's
    last sample minus its first; a process that ends between samples loses at most 50 ms).
    On a shared machine this is steadier than wall time.
    """

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)

    def __enter__(self) -> "PeakMemory":
        self.peak, self.peak_self, self._stop = 0, 0, threading.Event()
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        first_pass = True
        while not self._stop.is_set():
            total = 0
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
                if p.pid == self.process.pid:
                    self.peak_self = max(self.peak_self, pss)
            self.peak = max(self.peak, total)
            first_pass = False
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(last - self._cpu_first[pid] for pid, last in self._cpu_last.items())


def _timed(name: str, root: Path, out: Path, workers: int, conn) -> None:  # noqa: ANN001 - a Pipe end
    """Runs in a fresh process: (optionally start Ray,) run one pipeline, send back (images, seconds)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if name == "run_segdist_on_running_cluster":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        ray.get([ray.remote(num_cpus=1)(lambda: None).remote() for _ in range(workers)])
        time.sleep(3)  # a cluster that is up: its processes done starting, its workers running
        conn.send("ready")
    start = time.perf_counter()
    n = globals()[name](root, out, workers)
    conn.send((n, time.perf_counter() - start))


def measure(fn, root: Path, work: Path, workers: int) -> tuple[int, float, float, float, float]:
    """Images, seconds, peak MiB of the process tree and of its main process, CPU seconds, in a fresh process.

    A fresh process per run: memory left over from an earlier run (or from generating the data)
    is not counted, and nothing is shared between runs. The warm run starts its Ray cluster (and
    lets it settle) before the clock, the memory peak and the CPU time start.
    """
    import multiprocessing

    out = work / fn.__name__
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_timed, args=(fn.__name__, root, out, workers, child))
    process.start()
    if fn is run_segdist_on_running_cluster:
        assert parent.recv() == "ready"
    with PeakMemory(process.pid) as mem:
        n, seconds = parent.recv()
    process.join()
    shutil.rmtree(out)
    return n, seconds, mem.peak / 2**20, mem.peak_self / 2**20, mem.cpu_seconds


def ray_startup(workers: int) -> tuple[float, float]:
    """Seconds from nothing to a first task done on every worker (as prepare starts), and to shut down."""
    import ray

    from segdist.prepare.driver import ray_session

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

    from segdist.prepare import coco, coco_json
    from segdist.prepare.inputs import encode_png, read_image
    from segdist.prepare.task import ShardTask, label_counts, run_shard_task

    cv2.setNumThreads(1)  # as in a Ray worker with num_cpus=1
    data = coco_json.load_annotations(root / "annotations/instances_train.json")
    cats = coco_json.resolve_classes(CLASSES, data["categories"])
    specs = coco.build_specs(data, root / "train", cats, crowd="ignore", keep_empty=False, per_class=None,
                             seed=0)[0][:limit]
    opts = coco.CocoOptions(num_classes=len(CLASSES) + 1)
    labels = {s.key: coco.render_label(s, opts) for s in specs}
    (work / "profile" / "masks").mkdir(parents=True)
    (work / "profile" / "images").mkdir()
    _init_baseline(str(root / "annotations/instances_train.json"))
    task = ShardTask("train", 0, specs, work / "profile", len(CLASSES) + 1, 255, None)
    figures = {
        "baseline": _cpu_ms(lambda s: _baseline_one((s.image_id, str(root / "train"), str(work / "profile"))), specs),
        "segdist": _cpu_ms(lambda t: run_shard_task(t, partial(coco.convert, opts=opts)), [task]) / len(specs),
        "  read and check the image (JPEG at 1/2)": _cpu_ms(lambda s: read_image(Path(s.path)), specs),
        "  paint the label map": _cpu_ms(lambda s: coco.render_label(s, opts), specs),
        "  label PNG": _cpu_ms(lambda s: encode_png(labels[s.key]), specs),
        "  class pixel counts": _cpu_ms(lambda s: label_counts(labels[s.key], len(CLASSES) + 1, 255), specs),
    }
    shutil.rmtree(work / "profile")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="640x480")
    args = parser.parse_args()
    from segdist.synth.coco import write_synthetic_coco

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    width, height = (int(v) for v in args.size.split("x"))
    runs = (run_baseline, run_segdist, run_segdist_on_running_cluster)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_images in args.images:
            root = Path(tmp) / f"coco{n_images}"
            write_synthetic_coco(root, n_images, val_images=1, seed=0, width=width, height=height)
            rows.append((n_images, [measure(fn, root, Path(tmp), args.workers) for fn in runs]))
        profile = conversion_profile(root, Path(tmp))
    startup, shutdown = ray_startup(args.workers)
    print(f"\nprepare benchmark: synthetic COCO {args.size}, classes {','.join(CLASSES)}, {args.workers} processes")
    print("segdist = fresh local Ray started by the command; warm = Ray cluster already running (--address)")
    print(f"{'images':>6} {'converted':>9} | {'img/s baseline':>14} {'segdist':>8} {'warm':>8} | "
          f"{'speed-up':>8} {'warm':>6} | {'peak MiB baseline':>17} {'segdist':>8} {'(driver)':>8} {'warm':>6} | "
          f"{'cold-warm s':>11}")
    for n_images, ((nb, tb, mb, _, _), (ns, ts, ms, ds, _), (nw, tw, mw, _, _)) in rows:
        assert nb == ns == nw, f"all must convert the same images ({nb}, {ns}, {nw})"
        print(f"{n_images:>6} {nb:>9} | {nb / tb:>14.1f} {ns / ts:>8.1f} {nw / tw:>8.1f} | "
              f"{tb / ts:>7.2f}x {tb / tw:>5.2f}x | {mb:>17.0f} {ms:>8.0f} {ds:>8.0f} {mw:>6.0f} | {ts - tw:>11.2f}")
    print("CPU time of the whole process tree (Ray's processes included), ms per image, and baseline / segdist:")
    print(f"{'images':>6} | {'baseline':>8} {'segdist':>8} {'warm':>8} | {'ratio':>6} {'warm':>6}")
    for n_images, ((nb, _, _, _, cb), (_, _, _, _, cs), (_, _, _, _, cw)) in rows:
        print(f"{n_images:>6} | {cb / nb * 1000:>8.2f} {cs / nb * 1000:>8.2f} {cw / nb * 1000:>8.2f} | "
              f"{cb / cs:>5.2f}x {cb / cw:>5.2f}x")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    print(f"Ray start-up (local cluster up, a first task done on each of {args.workers} workers): {startup:.2f} s; "
          f"shutdown {shutdown:.2f} s")
    print("CPU per image, one process (ms):")
    for name, ms in profile.items():
        print(f"  {name:<42} {ms:6.2f}")
    print(f"  {'segdist / baseline':<42} {profile['segdist'] / profile['baseline']:6.2f}")


if __name__ == "__main__":
    main()
