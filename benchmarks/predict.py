"""`segdist predict` throughput against a plain PyTorch loop over the same files and model (issue 30).

One run, same machine, same inputs (real CamVid val frames, 480x360 JPEGs) and the same run's
model: each row is one command in a fresh process (start-up and model loading included) that
predicts every frame and writes its class-id PNG; the rows are interleaved over the repeats.

    plain loop      PIL decode, normalise, pad, forward, argmax, PIL PNG encode, one image at a time
                    (the hand-written script segdist replaces), torch's default threads
    segdist 1 proc  `segdist predict --outputs index` (DataLoader workers read ahead)
    segdist 2 proc  the same under `accelerate launch` with 2 CPU processes (1 thread each)
    segdist --ray   the Ray Data pipeline (a local Ray started by the command)

Then where segdist's time goes: the same predict in-process with no loader workers under
cProfile, its cumulative time split into decode (read + decode + resize), model, encode and
write (a local folder, and an s3:// prefix on moto: the upload).

    python benchmarks/predict.py [--images 101] [--repeat 3] [--run runs/X]

Without --run, a run of configs/camvid-cpu-50m.yaml's model is made from the real CamVid train
split in 1 optimizer step (the weights do not change the cost of a forward pass).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
SEGDIST = [sys.executable, "-m", "segdist"]
STAGES = {"decode": "reading.py:__getitem__", "model": "run.py:probabilities", "encode": "outputs.py:encoded",
          "write": "destination.py:put"}


def make_run(work: Path) -> Path:
    """A CamVid run trained for 1 step (the recipe's model and eval size)."""
    shards = work / "shards"
    subprocess.run([*SEGDIST, "prepare", "folder", "--images", CAMVID / "train", "--masks", CAMVID / "trainannot",
                    "--classes", CAMVID_CLASSES, "--source-ignore", "11", "--split", "train", "--out", shards],
                   check=True, capture_output=True)
    subprocess.run([*SEGDIST, "prepare", "folder", "--images", CAMVID / "val", "--masks", CAMVID / "valannot",
                    "--classes", CAMVID_CLASSES, "--source-ignore", "11", "--split", "val", "--out", shards],
                   check=True, capture_output=True)
    subprocess.run([*SEGDIST, "train", "--config", REPO / "configs/camvid-cpu-50m.yaml", f"data.shards={shards}",
                    f"train.runs_dir={work / 'runs'}", "train.name=bench", "train.max_steps=1",
                    "train.budget=null", "train.epochs=1"], check=True, capture_output=True)
    return work / "runs" / "bench"


def plain_loop_command(run_dir: Path, listing: Path, out: Path) -> float:
    """The plain loop in a fresh process, as every row runs (start-up and model loading included); its seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--plain", json.dumps([str(run_dir), str(listing), str(out)])],
                   check=True, cwd=REPO)
    return time.perf_counter() - start


def plain_loop(run_dir: Path, frames: list[Path], out: Path) -> None:
    """The hand-written loop."""
    import segdist

    run = segdist.load_run(run_dir)
    normalize = run.normalizer()  # the dataset's mean and std, as a script would hard-code them
    out.mkdir(parents=True)
    with torch.inference_mode():
        for frame in frames:
            rgb = np.array(Image.open(frame).convert("RGB"))
            x = normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None])
            h, w = x.shape[2:]
            x = torch.nn.functional.pad(x, (0, -w % 32, 0, -h % 32))
            labels = run.model(x)[:, :, :h, :w].argmax(1)[0].to(torch.uint8).numpy()
            Image.fromarray(labels).save(out / f"{frame.stem}.png")


def segdist_predict(run_dir: Path, listing: Path, out: Path, launch: list[str] | None = None,
                    extra: tuple[str, ...] = ()) -> float:
    """`segdist predict` in a fresh process (or under `launch`); returns its wall-clock seconds."""
    cmd = [*(launch or SEGDIST[:1]), "-m", "segdist", "predict", "--run", str(run_dir), "--input", f"@{listing}",
           "--out", str(out), "--outputs", "index", *extra]
    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if launch else {}))
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(" ".join(cmd) + "\n" + result.stdout[-2000:] + result.stderr[-3000:])
    return seconds


def stages(run_dir: Path, listing: Path, out: str) -> dict[str, float]:
    """Seconds per stage of an in-process predict with no loader workers (cProfile's cumulative times)."""
    from segdist.evaluation.predict import predict

    profile = cProfile.Profile()
    profile.enable()
    predict(run_dir, f"@{listing}", out, outputs="index", workers=0)
    profile.disable()
    stats = pstats.Stats(profile).stats
    found = {}
    for stage, name in STAGES.items():
        file, func = name.split(":")
        found[stage] = sum(v[3] for (path, _, f), v in stats.items() if path.endswith(file) and f == func)
    found["total"] = max(v[3] for v in stats.values())
    return found


def moto_prefix() -> tuple[object, str]:
    """moto's S3 server (as the tests run it) and a bucket prefix on it."""
    sys.path.insert(0, str(REPO / "tests"))
    from servers import moto_for_benchmark

    return moto_for_benchmark("bench"), "s3://bench/preds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=101)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--plain", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain is not None:
        run_dir, listing, out = json.loads(args.plain)
        return plain_loop(Path(run_dir), [Path(f) for f in Path(listing).read_text().split()], Path(out))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        run_dir = args.run or make_run(work)
        frames = sorted((CAMVID / "val").glob("*.jpg"))[: args.images]
        listing = work / "frames.txt"
        listing.write_text("".join(f"{f}\n" for f in frames))
        two = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml")]
        rows: dict[str, list[float]] = {}
        for i in range(args.repeat):  # interleaved, so host noise hits every row alike
            rows.setdefault("plain PyTorch loop", []).append(plain_loop_command(run_dir, listing, work / f"plain{i}"))
            rows.setdefault("segdist predict, 1 process", []).append(
                segdist_predict(run_dir, listing, work / f"one{i}"))
            rows.setdefault("segdist predict, 2 processes", []).append(
                segdist_predict(run_dir, listing, work / f"two{i}", launch=two))
            rows.setdefault("segdist predict --ray", []).append(
                segdist_predict(run_dir, listing, work / f"ray{i}", extra=("--ray",)))
        local = stages(run_dir, listing, str(work / "stages"))
        server, prefix = moto_prefix()
        try:
            remote = stages(run_dir, listing, prefix)
        finally:
            server.stop()
    base = statistics.median(rows["plain PyTorch loop"])
    print(f"cpu: {cpu}, {os.cpu_count()} cores; {len(frames)} CamVid val frames, {args.repeat} interleaved repeats")
    print("| predictor | median s | images/s | vs plain loop |\n|---|---:|---:|---:|")
    for name, seconds in rows.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median:.1f} | {len(frames) / median:.1f} | {base / median:.2f}x |")
    print("\nwhere the time goes (1 process, no loader workers, cProfile):")
    print("| out | decode | model | encode | write | total |\n|---|---:|---:|---:|---:|---:|")
    for name, found in (("local folder", local), ("s3 (moto)", remote)):
        print(f"| {name} | " + " | ".join(f"{found[k]:.1f} s" for k in (*STAGES, "total")) + " |")
    print(json.dumps({"rows": rows, "stages": {"local": local, "s3": remote}}))


if __name__ == "__main__":
    main()
