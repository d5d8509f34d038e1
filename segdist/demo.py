"""`segdist demo`: the built-in default job: synthetic COCO -> Ray prepare -> 2-process CPU training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from segdist import api
from segdist.format.class_stats import stats_table
from segdist.synth.coco import write_synthetic_coco

CLASSES = "person,bicycle,car"


def demo(workdir: str | Path = "shards/demo", images: int = 160, epochs: int = 8) -> dict:
    """Write a synthetic COCO tree, prepare it, train configs/demo.yaml on two gloo processes; returns the summary."""
    shards = Path(workdir)
    raw = shards.with_name(shards.name + "_raw")
    print(f"[1/3] synthetic COCO -> {raw}")
    write_synthetic_coco(raw, images, seed=0, width=320, height=240)
    print(f"[2/3] segdist prepare coco (Ray) -> {shards}")
    for split in ("train", "val"):
        manifest = api.prepare_coco(raw / split, raw / "annotations" / f"instances_{split}.json", CLASSES, shards,
                                    split=split, shard_size=32, overwrite=True)
    print("\n" + stats_table(manifest, "train"))
    print("\n[3/3] accelerate launch: 2 CPU processes (gloo) train configs/demo.yaml")
    run = Path("runs/demo")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/cpu-2proc.yaml",
           "-m", "segdist", "train", "--config", "configs/demo.yaml", f"data.shards={shards}", f"train.epochs={epochs}",
           "--overwrite"]  # a second `make demo` starts runs/demo over
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    summary = json.loads((run / "summary.json").read_text())
    print(f"\ndemo done: val mIoU {summary['best_miou']:.3f} (best, step {summary['best_step']}) on "
          f"{manifest['splits']['val']['samples']} validation images, {summary['world_size']} processes")
    print(f"TensorBoard logs:      tensorboard --logdir {run / 'tb'}")
    print(f"validation overlays:   {run / 'val_overlays'}/*.png (image | ground truth | prediction)")
    print(f"checkpoints:           {run / 'checkpoints'}")
    return summary
