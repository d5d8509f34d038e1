"""A CamVid validation that predicts new scenes (issue 31), and recipe runs scored on it.

CamVid's standard test split is mostly a drive (Seq05VD) seen in no shared frame, but the shared
val split is all 0016E5, the sequence of 204 of the 367 training frames: val ranks recipes for a
scene already trained on. The proxy holds out a whole sequence instead:

- `proxy`: train on every 0001TP and 0016E5 frame (62 + 204 train, 101 val = 367), validate on all
  101 frames of 0006R0 (a sequence in no training frame);
- `old`: the shared split (367 train, 101 val of 0016E5), as docs/results.md's earlier figures;
- `full`: all 468 shared frames as `train`, the 101 val frames also as `val` (monitoring only): the
  final recipe's data.

The splits are built as folders of links to ../shared/data/camvid (nothing copied) and prepared
with `segdist prepare folder`. Each run trains RECIPE with OVERRIDES for a budget on 2 CPU
processes, then `segdist evaluate` scores its last (EMA) checkpoint with each `--tta`; results
go into WORK/proxy_results.json under the run's name, and the table of every run so far is printed.

    python benchmarks/camvid_proxy.py --work DIR --name NAME [--split proxy] [--minutes 20]
        [--tta flip --tta scales=0.75,1.0,1.25,1.5,flip] [OVERRIDE ...]
    python benchmarks/camvid_proxy.py --work DIR --split full --prepare   # shards only: DIR/shards-full
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from camvid import CAMVID, CLASSES, REPO, per_class_cells, score_last, train_for

HELD_OUT = "0006R0"  # the sequence the proxy validates on
SPLITS = ("proxy", "old", "full")


def frames(folder: str) -> list[Path]:
    return sorted((CAMVID / folder).glob("*.jpg"))


def split_frames(split: str) -> dict[str, list[tuple[Path, Path]]]:
    """{'train': [(image, mask), ...], 'val': [...]} for one of SPLITS."""
    pairs = {name: [(p, CAMVID / f"{name}annot" / f"{p.stem}.png") for p in frames(name)]
             for name in ("train", "val")}
    everything = pairs["train"] + pairs["val"]
    if split == "proxy":
        return {"train": [p for p in everything if not p[0].name.startswith(HELD_OUT)],
                "val": [p for p in everything if p[0].name.startswith(HELD_OUT)]}
    if split == "old":
        return pairs
    return {"train": everything, "val": pairs["val"]}


def prepare(split: str, work: Path) -> Path:
    """Shards of `split` under WORK/shards-<split> (kept: prepared once)."""
    out = work / f"shards-{split}"
    if (out / "dataset.json").exists():
        return out
    for name, pairs in split_frames(split).items():
        images, masks = work / f"links-{split}" / name, work / f"links-{split}" / f"{name}annot"
        for folder in (images, masks):
            folder.mkdir(parents=True, exist_ok=True)
        for image, mask in pairs:
            for link, target in ((images / image.name, image), (masks / mask.name, mask)):
                if not link.exists():
                    link.symlink_to(target)
        subprocess.run([sys.executable, "-m", "segdist", "prepare", "folder", "--images", str(images), "--masks",
                        str(masks), "--classes", ",".join(CLASSES), "--source-ignore", "11", "--split", name,
                        "--out", str(out)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def cpu_name() -> str:
    found = re.search(r"Model name:\s*(.*)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout)
    return found.group(1).strip() if found else "unknown"


def print_table(results: dict) -> None:
    print(f"| run | split | overrides | steps | minutes | TTA | mIoU | {' | '.join(CLASSES)} |")
    print("|---|---|---|---:|---:|---|---:|" + "---:|" * len(CLASSES))
    for name, r in results.items():
        for tta, scored in r["scores"].items():
            print(f"| {name} | {r['split']} | {' '.join(r['overrides']) or '-'} | {r['steps']} | {r['minutes']:.1f} | "
                  f"{tta} | {scored['miou']:.3f} | {per_class_cells(scored['per_class_iou'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="shards, runs and results are kept here")
    parser.add_argument("--name", help="the run's name (a new run; omit to print the table only)")
    parser.add_argument("--prepare", action="store_true", help="only prepare the split's shards (WORK/shards-SPLIT)")
    parser.add_argument("--split", choices=SPLITS, default="proxy")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--recipe", type=Path, default=REPO / "configs/camvid-cpu-50m.yaml")
    parser.add_argument("--tta", action="append", help="evaluate's --tta, repeatable (default: flip)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.mixed_precision=bf16")
    args = parser.parse_args()
    saved = args.work / "proxy_results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    if args.prepare:
        print(prepare(args.split, args.work))
        return
    if args.name:
        shards = prepare(args.split, args.work)
        summary = train_for(args.recipe, shards, args.work / "runs", args.name, args.minutes, args.overrides)
        run = args.work / "runs" / args.name
        results[args.name] = {"split": args.split, "overrides": args.overrides, "cpu": cpu_name(),
                              "steps": summary["steps"], "minutes": summary["elapsed_s"] / 60,
                              "budget_minutes": args.minutes, "finished": time.strftime("%Y-%m-%d %H:%M"),
                              "scores": {tta: score_last(run, tta) for tta in args.tta or ["flip"]}}
        saved.write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
