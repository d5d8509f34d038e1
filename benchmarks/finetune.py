"""Fine-tuning against training from scratch: CamVid in the same minutes, from scratch or from a COCO run.

1. `segdist prepare coco` the shared COCO subset (../shared/data/coco-mini, every class it holds),
   and train the CamVid recipe's model (U-Net-ResNet18) on it for --pretrain-minutes.
2. On CamVid (../shared/data/camvid, train -> val), the recipe (configs/camvid-cpu-50m.yaml) for
   --minutes on 2 CPU processes, twice, back to back: from scratch, and with
   `model.init_from=<the COCO run> model.freeze_encoder=0.1 optim.encoder_lr_scale=0.1`
   (the classifier for CamVid's 11 classes starts fresh).
3. Both scored by `segdist evaluate` on CamVid val (last checkpoint, flip TTA as the recipe's
   benchmark does); prints the val mIoU and every class's IoU, and keeps them in finetune.json.

    python benchmarks/finetune.py [--minutes 50] [--pretrain-minutes 20] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from camvid import REPO, prepare, print_results, run_segdist

COCO = REPO.parent / "shared" / "data" / "coco-mini"
RECIPE = REPO / "configs/camvid-cpu-50m.yaml"
FINE_TUNING = ("model.freeze_encoder=0.1", "optim.encoder_lr_scale=0.1")


def coco_classes() -> list[str]:
    """Every category of the shared COCO subset's annotation files, in id order."""
    categories = json.loads((COCO / "annotations/instances_train2017.json").read_text())["categories"]
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def prepare_coco(out: Path) -> None:
    for split in ("train", "val"):
        subprocess.run([sys.executable, "-m", "segdist", "prepare", "coco", "--images", str(COCO / f"{split}2017"),
                        "--annotations", str(COCO / f"annotations/instances_{split}2017.json"), "--classes",
                        ",".join(coco_classes()), "--split", split, "--out", str(out), "--shard-size", "16"],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def pretrain(shards: Path, runs: Path, minutes: float) -> Path:
    """The recipe's model trained on COCO; CamVid's class weights and full-size validation do not apply."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml")]
    subprocess.run([*launch, "-m", "segdist", "train", "--config", str(RECIPE), f"data.shards={shards}",
                    f"train.runs_dir={runs}", "train.name=coco", f"train.budget={minutes}m", "loss.class_weights=null",
                    "data.val_size=480", "train.val_every=10", "--overwrite"], check=True, cwd=REPO)
    return runs / "coco"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=50, help="CamVid training minutes, each run")
    parser.add_argument("--pretrain-minutes", type=float, default=20, help="COCO training minutes")
    parser.add_argument("--work", type=Path, default=None, help="keep shards and runs here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    if not (work / "coco/dataset.json").exists():
        prepare_coco(work / "coco")
    if not (work / "camvid/dataset.json").exists():
        prepare(work / "camvid")
    source = work / "runs/coco"
    if not (source / "summary.json").exists():
        source = pretrain(work / "coco", work / "runs", args.pretrain_minutes)
    results = {
        "from scratch": run_segdist(RECIPE, work / "camvid", work / "runs", args.minutes, "flip", name="scratch"),
        "init_from COCO": run_segdist(RECIPE, work / "camvid", work / "runs", args.minutes, "flip", name="tuned",
                                      overrides=(f"model.init_from={source}", *FINE_TUNING)),
    }
    print(f"\nCamVid val (101 images, 11 classes), {args.minutes:g} minutes each on 2 CPU processes; the COCO "
          f"run: {args.pretrain_minutes:g} minutes")
    print_results("start", "val mIoU", results)
    (work / "finetune.json").write_text(json.dumps(results, indent=1))
    ratio = results["init_from COCO"]["miou"] / results["from scratch"]["miou"]
    print(f"ratio (init_from / scratch val mIoU): {ratio:.3f}; all figures in {work / 'finetune.json'}")


if __name__ == "__main__":
    main()
