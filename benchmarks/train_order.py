"""The training order against an earlier one: resume cost and loader speed, one run.

The baseline is segdist itself at an earlier commit (`--baseline`, extracted with `git archive` and
run from there); both run the same commands on the same data. Issue 21 (exact epochs) compared
with 04e1f15, the streaming loader before it; issue 28 (order v2, the node prefetcher and cache)
with 9b4a343, order v1 (the default): chunks of 8, ranged HTTP reads one micro-batch ahead, no
cache unless asked. Every HTTP run starts from an empty node cache (its own XDG_CACHE_HOME).

  resume   time from starting `segdist train --resume` to its first training step, resumed at 10%
           and at 90% of a 10,000-sample epoch (synthetic COCO 640x480, shards of 256, 1 process,
           2 loader workers, batch 8; the checkpoint's step count is set to that point)
  loader   `segdist bench-data` images/s on the real CamVid train split (demo recipe's augmentation),
           1 and 2 loader workers, shards read locally and over HTTP with 5 ms per request (a cold
           node cache: every shard downloaded in the measured seconds)

    python benchmarks/train_order.py [--parts resume,loader] [--repeat 3] [--baseline 9b4a343]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
sys.path.insert(0, str(REPO / "tests"))  # the HTTP server the tests use

from servers import FaultyServer  # noqa: E402

CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
TINY = ["model.encoder=test_resnet", "model.arch_kwargs={decoder_channels: [16, 16, 16, 16, 16]}",
        "data.crop_size=[64,64]", "data.base_size=96", "data.val_size=96", "data.batch_size=8", "data.workers=2",
        "train.val_every=1000", "train.log_every=1"]


def baseline_tree(commit: str, work: Path) -> Path:
    """The baseline segdist, extracted from git into `work/baseline`."""
    target = work / "baseline"
    archive = work / "baseline.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def segdist(tree: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m segdist ARGS` from `tree` (its own package first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "segdist", *args], cwd=tree, env=env, capture_output=True,
                          text=True, check=check)


def prepare_synthetic(work: Path) -> Path:
    from segdist.synth.coco import write_synthetic_coco

    raw, shards = work / "raw10k", work / "shards10k"
    write_synthetic_coco(raw, 10_000, val_images=8, seed=0, width=640, height=480)
    for split in ("train", "val"):
        segdist(REPO, "prepare", "coco", "--images", str(raw / split), "--annotations",
                str(raw / "annotations" / f"instances_{split}.json"), "--classes", "person,bicycle,car",
                "--split", split, "--out", str(shards), "--shard-size", "256", "--keep-empty")
    return shards


def resumed_at(tree: Path, shards: Path, runs: Path, name: str, share: float) -> float:
    """Seconds from `--resume` to the first step, the checkpoint moved to `share` of the first epoch."""
    run = runs / name
    if not run.exists():  # two real steps, then the checkpoint's counts are moved (its weights do not matter)
        segdist(tree, "train", "--config", "configs/demo.yaml", f"data.shards={shards}", f"train.runs_dir={runs}",
                f"train.name={name}", "train.max_steps=2", "train.checkpoint_every=1", *TINY)
    state_file = run / "checkpoints/step_00000002/segdist_state.json"
    state = json.loads(state_file.read_text())
    per_epoch = 10_000 // 8
    state.update(update=int(share * per_epoch), batch=int(share * per_epoch), max_steps=int(share * per_epoch) + 1,
                 planned_steps=int(share * per_epoch) + 1, validated_at=0)
    moved = run / f"moved_{share}"
    shutil.rmtree(moved, ignore_errors=True)
    shutil.copytree(run / "checkpoints/step_00000002", moved)
    (moved / "segdist_state.json").write_text(json.dumps(state))
    started = time.time()
    segdist(tree, "train", "--config", "configs/demo.yaml", f"data.shards={shards}", f"train.runs_dir={runs}",
            f"train.name={name}", f"train.max_steps={state['max_steps']}", "train.checkpoint_every=0", *TINY,
            f"--resume-from={moved}")
    first = next(json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()
                 if json.loads(line)["step"] == state["update"] + 1)
    return first["time"] - started


def part_resume(trees: dict[str, Path], work: Path, repeat: int) -> None:
    shards = prepare_synthetic(work)
    print("\nresume: seconds from `segdist train --resume` to the first step (median of "
          f"{repeat}), 10,000-sample epoch, 1 process, 2 loader workers")
    for share in (0.1, 0.9):
        times = {name: [] for name in trees}
        for _ in range(repeat):
            for name, tree in trees.items():
                times[name].append(resumed_at(tree, shards, work / "runs", name, share))
        row = {name: statistics.median(t) for name, t in times.items()}
        print(f"  at {share:.0%}: " + ", ".join(f"{n} {v:.1f} s" for n, v in row.items())
              + f"  (baseline / current: {row['baseline'] / row['current']:.2f}x)"
              + (f"  target < 10 s: {'met' if row['current'] < 10 else 'NOT met'}" if share == 0.9 else ""))


def bench_data(tree: Path, shards: str, workers: str, seconds: float) -> dict[int, float]:
    """images/s per worker count, from an empty node cache."""
    with tempfile.TemporaryDirectory(prefix="segdist-cache-") as cache:
        out = segdist(tree, "bench-data", "--config", "configs/demo.yaml", f"data.shards={shards}", "--workers",
                      workers, "--seconds", str(seconds), env={"XDG_CACHE_HOME": cache}).stdout
    return {int(w): float(rate) for w, rate in re.findall(r"^\s+(\d+)\s+([\d.]+)\s", out, re.M)}


def part_loader(trees: dict[str, Path], work: Path, repeat: int, seconds: float, latency: float) -> None:
    shards = work / "camvid"
    segdist(REPO, "prepare", "folder", "--images", str(CAMVID / "train"), "--masks", str(CAMVID / "trainannot"),
            "--classes", CAMVID_CLASSES, "--source-ignore", "11", "--split", "train", "--out", str(shards),
            "--shard-size", "64")
    segdist(REPO, "prepare", "folder", "--images", str(CAMVID / "val"), "--masks", str(CAMVID / "valannot"),
            "--classes", CAMVID_CLASSES, "--source-ignore", "11", "--split", "val", "--out", str(shards),
            "--shard-size", "64")
    print(f"\nloader: `segdist bench-data` images/s, CamVid train (367, shards of 64), demo recipe augmentation, "
          f"median of {repeat} x {seconds:g} s")
    rates: dict = {}
    with FaultyServer(shards, latency=latency) as server:
        for where, url in (("local", str(shards)), ("http", server.url)):
            rates[where] = {name: {1: [], 2: []} for name in trees}
            for i in range(repeat):
                for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):  # alternate which goes first
                    for w, rate in bench_data(trees[name], url, "1,2", seconds).items():
                        rates[where][name][w].append(rate)
    median = {(where, name, w): statistics.median(r) for where, by_name in rates.items()
              for name, by_w in by_name.items() for w, r in by_w.items()}
    for where, w, target in (("local", 1, 1.0), ("local", 2, 1.0), ("http", 1, None), ("http", 2, 1.2)):
        base, new = median[where, "baseline", w], median[where, "current", w]
        verdict = "" if target is None else f"  target >= {target:g}x: {'met' if new / base >= target else 'NOT met'}"
        label = "local" if where == "local" else f"HTTP {latency * 1000:g} ms"
        print(f"  {label:>10}, {w} worker(s): baseline {base:.1f}, current {new:.1f} img/s ({new / base:.2f}x)"
              + verdict)
    ratio = median["http", "current", 2] / median["local", "current", 2]
    print(f"  current, 2 workers: HTTP / local copy {ratio:.2f}x  target >= 1.0x: "
          f"{'met' if ratio >= 1.0 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="resume,loader")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--baseline", default="9b4a343", help="the earlier commit (9b4a343: order v1)")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("cpu:", re.search(r"Model name:\s*(.*)", cpu).group(1), f"({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="segdist-order-") as tmp:
        work = Path(tmp)
        trees = {"baseline": baseline_tree(args.baseline, work), "current": REPO}
        if "resume" in args.parts:
            part_resume(trees, work, args.repeat)
        if "loader" in args.parts:
            part_loader(trees, work, args.repeat, args.seconds, args.latency)


if __name__ == "__main__":
    main()
