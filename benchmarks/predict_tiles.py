"""Peak memory of `segdist predict --tile` against `--mode slide` on the same windows, as the image grows taller.

Each row is one predict in a fresh process (`--outputs index`, one image, no loader workers): its
peak resident memory (ru_maxrss) above the process's peak once the run is loaded, and its time.
The images are synthetic tiled TIFFs of a fixed width and growing heights; the run is a random-init
U-Net (timm's test_resnet encoder) with --classes classes (the weights do not change the memory).

    python benchmarks/predict_tiles.py [--width 2048] [--heights 2048,4096,8192] [--classes 20]
                                       [--tile 512] [--overlap 64]

--tile's peak stays flat as the height grows (one window row of logits held); slide's grows with
the image (its image, logits and probabilities are whole).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_run(root: Path, classes: int) -> Path:
    """A random-init run directory (config.yaml, dataset.json, checkpoints/best)."""
    import torch
    from safetensors.torch import save_file

    from segdist.config import Config
    from segdist.config.loading import save_config
    from segdist.models import build_from_config

    cfg = Config()
    cfg.model.arch, cfg.model.encoder, cfg.model.arch_kwargs = "unet", "test_resnet", {"decoder_channels": [16] * 5}
    root.mkdir(parents=True)
    save_config(cfg, root / "config.yaml")
    rng = np.random.default_rng(0)
    (root / "dataset.json").write_text(json.dumps({
        "classes": [f"c{i}" for i in range(classes)], "palette": rng.integers(0, 256, (classes, 3)).tolist(),
        "ignore_index": 255, "splits": {}, "mean": [0.5] * 3, "std": [0.25] * 3}))
    torch.manual_seed(0)
    model = build_from_config(cfg.model, classes, pretrained=False)
    best = root / "checkpoints" / "best"
    best.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(best / "model.safetensors"))
    (best / "segdist_complete.json").write_text(json.dumps({"files": ["model.safetensors"]}))
    return root


def make_image(path: Path, height: int, width: int) -> None:
    import tifffile

    blocks = np.random.default_rng(height).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    tifffile.imwrite(path, np.kron(blocks, np.ones((8, 8, 1), np.uint8)), tile=(256, 256), compression="zlib")


def child(run: str, image: str, out: str, mode: str, tile: int, overlap: int) -> None:
    """One predict; prints {"peak_mib", "loaded_mib", "seconds"}."""
    from segdist.evaluation.predict import predict
    from segdist.runs.run import load_run

    load_run(run)
    loaded, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    if mode == "tile":
        predict(run, image, out, tile=(tile, tile), overlap=overlap, outputs="index", workers=0)
    else:
        predict(run, image, out, mode="slide", crop=(tile, tile), stride=(tile - overlap,) * 2, outputs="index",
                workers=0, max_pixels=1 << 30)
    seconds, peak = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "loaded_mib": loaded / 1024, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heights", default="2048,4096,8192")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--child", nargs=4, metavar=("RUN", "IMAGE", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.tile, args.overlap)
        return
    with tempfile.TemporaryDirectory(prefix="predict-tiles-") as tmp:
        run = make_run(Path(tmp) / "run", args.classes)
        print(f"width {args.width}, {args.classes} classes, tile {args.tile}, overlap {args.overlap}")
        print(f"{'height':>7} {'mode':>6} {'peak - loaded MiB':>18} {'logits MiB':>11} {'seconds':>8}")
        for height in map(int, args.heights.split(",")):
            image = Path(tmp) / f"h{height}.tif"
            make_image(image, height, args.width)
            for mode in ("slide", "tile"):
                command = [sys.executable, __file__, "--tile", str(args.tile), "--overlap", str(args.overlap),
                           "--child", str(run), str(image), str(Path(tmp) / f"out-{mode}-{height}"), mode]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                logits = height * args.width * args.classes * 4 / 2**20
                print(f"{height:>7} {mode:>6} {row['peak_mib'] - row['loaded_mib']:>18.0f} {logits:>11.0f} "
                      f"{row['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
