"""Better models for the same budget: segdist's CamVid recipe vs the plain seed-style loop, same wall clock.

Both train from scratch on the real CamVid train split (../shared/data/camvid) for the same number
of minutes on this machine and are scored on its val split the same way: one confusion matrix over
the whole split, predictions at the label's resolution (360x480), class 11 (Unlabelled) ignored.

- segdist: `accelerate launch` (2 CPU processes) `segdist train --config RECIPE train.budget=Nm`,
  then `segdist evaluate` (whole images, `--tta` as given).
- plain loop: benchmarks/plain_loop.py as the issue describes it: folder Dataset, the same smp
  U-Net-ResNet18, Adam, unweighted CE, inputs resized to 180x240, batch 8, one process, trained
  for the same minutes, then scored (its predictions upsampled to the labels' size).

    python benchmarks/camvid.py [--minutes 50] [--recipe configs/camvid-cpu-50m.yaml] [--skip-plain | --skip-segdist]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]


def per_class_cells(ious: list[float]) -> str:
    """Per-class IoUs as markdown table cells: `0.81 | 0.45 | ...`."""
    return " | ".join(f"{v:.2f}" for v in ious)


def print_results(first_column: str, miou_column: str, results: dict) -> None:
    """A markdown table of run_segdist-style results: label, steps, mIoU, per-class IoU."""
    print(f"| {first_column} | steps | {miou_column} | {' | '.join(CLASSES)} |")
    print("|---|---:|---:|" + "---:|" * len(CLASSES))
    for label, r in results.items():
        print(f"| {label} | {r['steps']} | {r['miou']:.3f} | {per_class_cells(r['per_class_iou'])} |")


def prepare(out: Path) -> None:
    for split, images, masks in (("train", "train", "trainannot"), ("val", "val", "valannot")):
        subprocess.run([sys.executable, "-m", "segdist", "prepare", "folder", "--images", str(CAMVID / images),
                        "--masks", str(CAMVID / masks), "--classes", ",".join(CLASSES), "--source-ignore", "11",
                        "--split", split, "--out", str(out)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def run_segdist(recipe: Path, shards: Path, runs: Path, minutes: float, tta: str, name: str = "recipe",
                overrides: tuple[str, ...] = (), port: int | None = None) -> dict:
    """Train `recipe` for `minutes` on 2 CPU processes (a new run: an earlier one of `name` is replaced), score it."""
    summary = train_for(recipe, shards, runs, name, minutes, overrides, port)
    scored = score_last(runs / name, tta)
    return {"miou": scored["miou"], "per_class_iou": scored["per_class_iou"], "steps": summary["steps"],
            "minutes": summary["elapsed_s"] / 60, "best_val_miou_during_training": summary["best_miou"]}


def train_for(recipe: Path, shards: Path, runs: Path, name: str, minutes: float, overrides: Sequence[str] = (),
              port: int | None = None) -> dict:
    """Train a new run `name` of `recipe` with `overrides` for a `minutes` budget on 2 CPU processes; its summary."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
              *(["--main_process_port", str(port)] if port else [])]
    subprocess.run([*launch, "-m", "segdist", "train", "--config", str(recipe), f"data.shards={shards}",
                    f"train.runs_dir={runs}", f"train.name={name}", f"train.budget={minutes}m", *overrides,
                    "--overwrite"], check=True, cwd=REPO)
    return json.loads((runs / name / "summary.json").read_text())


def score_last(run: Path, tta: str) -> dict:
    """`segdist evaluate` of the run's last checkpoint on its val split with `tta`: mIoU, per class, seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "segdist", "evaluate", "--run", str(run), "--checkpoint", "last",
                    "--tta", tta], check=True, cwd=REPO)
    metrics = json.loads((run / "eval/val/metrics.json").read_text())
    return {"miou": metrics["miou"], "per_class_iou": [metrics["per_class"][c]["iou"] for c in CLASSES],
            "seconds": time.perf_counter() - start, "images": metrics["samples"]}


def run_plain(minutes: float, work: Path) -> dict:
    report = work / "plain.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/plain_loop.py"), "--images", str(CAMVID / "train"),
                    "--masks", str(CAMVID / "trainannot"), "--resize", "180", "240", "--batch", "8", "--workers", "1",
                    "--minutes", str(minutes), "--val-images", str(CAMVID / "val"), "--val-masks",
                    str(CAMVID / "valannot"), "--report", str(report)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=50)
    parser.add_argument("--recipe", type=Path, default=REPO / "configs/camvid-cpu-50m.yaml")
    parser.add_argument("--tta", default="flip", help="evaluate's --tta for segdist (none, flip, ...)")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--skip-segdist", action="store_true", help="train and score the plain loop only")
    parser.add_argument("--work", type=Path, default=None, help="keep shards and runs here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="camvid-bench-"))
    if not (work / "shards/dataset.json").exists():
        prepare(work / "shards")
    saved = work / "camvid_results.json"  # a run of one pipeline keeps the other's last figures
    results = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.skip_segdist:
        results["segdist"] = run_segdist(args.recipe, work / "shards", work / "runs", args.minutes, args.tta)
    if not args.skip_plain:
        results["plain loop"] = run_plain(args.minutes, work)
    print(f"\nCamVid val (101 images, 11 classes), {args.minutes:g} minutes of training on this machine:")
    print_results("pipeline", "val mIoU", results)
    saved.write_text(json.dumps(results, indent=1))
    print(f"(all figures in {saved})")


if __name__ == "__main__":
    main()
