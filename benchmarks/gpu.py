"""GPU figures: `segdist train` at Cityscapes size in fp32, bf16 + channels_last and with torch.compile,
with the shard loader feeding it, and a full train -> evaluate -> predict pass with NCCL.

Synthetic Cityscapes frames (2048x1024, `segdist synth cityscapes`) are prepared into shards; each
variant trains DeepLabV3+ ResNet-50 on 512x1024 crops (configs/mmseg-deeplabv3plus-...yaml) for a
fixed number of steps on one GPU. Printed per variant: images/s (summary.json, steady steps), the
loop's data-wait share, and the GPU busy share sampled with nvidia-smi every 200 ms while it trains.
The ratio is against fp32 measured in the same run.

    python benchmarks/gpu.py [--images 64] [--steps 60] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs/mmseg-deeplabv3plus-r50-cityscapes-512x1024-80k.yaml"
VARIANTS = {
    "fp32": ["train.mixed_precision=no"],
    "bf16 + channels_last": ["train.mixed_precision=bf16", "model.channels_last=true"],
    "bf16 + channels_last + compile": ["train.mixed_precision=bf16", "model.channels_last=true", "model.compile=true"],
}


class GpuBusy:
    """Samples `nvidia-smi` utilization.gpu (percent of time a kernel ran) in a background thread."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def stop(self, skip_first: int = 25) -> float:
        """Mean busy share, leaving out the first samples (start-up, compile)."""
        self.proc.terminate()
        self.thread.join(timeout=5)
        steady = self.samples[skip_first:] or self.samples
        return sum(steady) / max(len(steady), 1) / 100


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=REPO)


def train(shards: Path, runs: Path, name: str, steps: int, batch: int, extra: list[str]) -> dict:
    busy = GpuBusy()
    run([sys.executable, "-m", "segdist", "train", "--config", str(RECIPE), f"data.shards={shards}",
         f"train.runs_dir={runs}", f"train.name={name}", f"train.max_steps={steps}", f"data.batch_size={batch}",
         "train.val_every=1000", "train.log_every=5", "model.encoder_weights=null", "data.workers=8", *extra])
    summary = json.loads((runs / name / "summary.json").read_text())
    log = [json.loads(line) for line in (runs / name / "train_log.jsonl").read_text().splitlines()]
    steady = log[10:]
    images_per_s = batch * (len(steady) - 1) / (steady[-1]["time"] - steady[0]["time"])
    return {"images_per_s": images_per_s, "data_wait_share": summary["data_wait_share"], "gpu_busy": busy.stop()}


def nccl_pass(shards: Path, runs: Path, raw: Path) -> None:
    """train (NCCL, every GPU) -> evaluate -> predict, as a user would run them."""
    gpus = torch.cuda.device_count()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
              "--mixed_precision", "bf16"] if gpus > 1 else [sys.executable, "-m", "accelerate.commands.launch",
                                                              "--num_processes", "1"]
    run([*launch, "-m", "segdist", "train", "--config", str(RECIPE), f"data.shards={shards}", f"train.runs_dir={runs}",
         "train.name=nccl", "train.max_steps=40", "data.batch_size=4", "model.encoder_weights=null",
         "train.mixed_precision=bf16"])
    run([*launch, "-m", "segdist", "evaluate", "--run", str(runs / "nccl"), "--checkpoint", "last"])
    run([sys.executable, "-m", "segdist", "predict", "--run", str(runs / "nccl"), "--checkpoint", "last",
         "--input", str(raw / "leftImg8bit/val"), "--out", str(runs / "nccl/predictions")])
    print(f"NCCL pass: train on {gpus} GPU(s) -> evaluate -> predict: done "
          f"({len(list((runs / 'nccl/predictions/index').glob('*.png')))} predictions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run([sys.executable, "-m", "segdist", "synth", "cityscapes", "--out", str(tmp / "raw"), "--images",
             str(args.images), "--val-images", "16", "--size", "2048x1024"])
        for split in ("train", "val"):
            run([sys.executable, "-m", "segdist", "prepare", "cityscapes", "--root", str(tmp / "raw"), "--split", split,
                 "--out", str(tmp / "shards"), "--shard-size", "8"])
        results = {}
        for label, extra in VARIANTS.items():
            results[label] = train(tmp / "shards", tmp / "runs", label.replace(" ", "").replace("+", "_"), args.steps,
                                   args.batch, extra)
            time.sleep(2)
        base = results["fp32"]["images_per_s"]
        print(f"\nDeepLabV3+ ResNet-50, 512x1024 crops, batch {args.batch}, on {torch.cuda.get_device_name(0)}:")
        print("| variant | images/s | vs fp32 | GPU busy | loop waiting for data |")
        print("|---|---:|---:|---:|---:|")
        for label, r in results.items():
            print(f"| {label} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f}x | {r['gpu_busy']:.0%} | "
                  f"{r['data_wait_share']:.0%} |")
        nccl_pass(tmp / "shards", tmp / "runs", tmp / "raw")


if __name__ == "__main__":
    main()
