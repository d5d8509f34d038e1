"""Training benchmarks, each a ratio against a baseline measured in the same run, repeated.

(a) end to end on the real CamVid (../shared/data/camvid): `segdist train` vs the hand-written
    loop the prior reports use (benchmarks/plain_loop.py: folder Dataset with PIL, albumentations,
    the same smp U-Net-ResNet18 from scratch, Adam, CE), 192x256 crops, batch 8, 1 loader worker,
    with 1 process and with 2 processes (DDP, gloo). Images/s over the steady steps. segdist runs
    with its defaults (channels-last on CPU); `--set model.channels_last=false` compares like for like.
(b) the loop itself with 2 processes: segdist's loop (benchmarks/segdist_in_memory.py) vs the bare
    DDP loop, both fed one in-memory batch, so only the loops differ; collectives and syncs included.
    Wall clock, the order alternating between repeats; benchmarks/loop_profile.py measures the
    same from samples of each rank, which the machine's drifting load does not move.
(c) the loader alone: `segdist bench-data` vs the folder Dataset's DataLoader on the same images.

    python benchmarks/train.py [--steps 40] [--repeat 2] [--parts a,b,c] [--processes 1,2] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
WARM = 5  # steps left out of every figure: start-up, first allocations, worker start
# segdist configured as the plain loop is: same model, crop, batch, optimizer, loss, augmentation.
SAME_AS_PLAIN = ["model.arch=unet", "model.encoder=resnet18", "data.crop_size=[192,256]", "data.batch_size=8",
                 "data.workers=1", "data.scale_range=[0.5,2.0]", "data.hflip=0.5", "data.normalize=imagenet",
                 "optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0.0", "optim.scheduler=constant",
                 "loss.name=ce", "train.val_every=1000", "train.log_every=10", "data.epoch_samples=100000",
                 "data.shuffle_window=64", "data.base_size=null"]  # demo.yaml shrinks inputs: not here


def prepare_camvid(out: Path) -> Path:
    """CamVid train and val as segdist shards (not timed)."""
    for split, images, masks in (("train", "train", "trainannot"), ("val", "val", "valannot")):
        subprocess.run([sys.executable, "-m", "segdist", "prepare", "folder", "--images", str(CAMVID / images),
                        "--masks", str(CAMVID / masks), "--classes", CLASSES, "--source-ignore", "11",
                        "--split", split, "--out", str(out), "--shard-size", "64"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return out


def launch(processes: int, accelerate: bool) -> list[str]:
    if processes == 1:
        return [sys.executable]
    if accelerate:
        return [sys.executable, "-m", "accelerate.commands.launch",
                "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
                "--num_processes", str(processes), "--main_process_port", str(29600 + os.getpid() % 300)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(29900 + os.getpid() % 300)]


def images_per_second(times: list[float], images_per_step: int) -> float:
    """Steady throughput: the steps after the first WARM ones."""
    steady = times[WARM:]
    return images_per_step * (len(steady) - 1) / (steady[-1] - steady[0])


def segdist_rate(shards: Path, work: Path, processes: int, steps: int, in_memory: bool = False,
                 overrides: Sequence[str] = ()) -> float:
    name = f"{'mem' if in_memory else 'e2e'}{processes}-{time.time_ns()}"
    entry = [str(REPO / "benchmarks/segdist_in_memory.py")] if in_memory else ["-m", "segdist", "train"]
    # (b) compares the loops alone: the same (contiguous) memory format as the bare loop's model
    like_for_like = ["model.channels_last=false"] if in_memory else []
    cmd = [*launch(processes, accelerate=True), *entry, "--config", str(REPO / "configs/demo.yaml"),
           f"data.shards={shards}", f"train.runs_dir={work}", f"train.name={name}", f"train.max_steps={steps}",
           *SAME_AS_PLAIN, *like_for_like, *overrides]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = [json.loads(line) for line in (work / name / "train_log.jsonl").read_text().splitlines()]
    return images_per_second([e["time"] for e in log], 8 * processes)


def plain_rate(processes: int, steps: int, in_memory: bool = False) -> float:
    cmd = [*launch(processes, accelerate=False), str(REPO / "benchmarks/plain_loop.py"), "--steps", str(steps),
           "--images", str(CAMVID / "train"), "--masks", str(CAMVID / "trainannot"), "--encoder", "resnet18",
           "--crop", "192", "256", "--batch", "8", "--workers", "1", *(["--in-memory"] if in_memory else [])]
    out = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return images_per_second(result["times"], result["batch"] * result["world"])


def measure_pair(ours, theirs, run: int) -> tuple[float, float]:  # noqa: ANN001
    """(ours(), theirs()), the first of them alternating with `run`: the machine's load drifts."""
    if run % 2:
        b = theirs()
        return ours(), b
    a = ours()
    return a, theirs()


def compare(label: str, ours, theirs, repeat: int) -> None:  # noqa: ANN001
    """Alternate the two measurements `repeat` times; print each pair, its ratio and the median ratio."""
    ratios = []
    for i in range(repeat):
        a, b = measure_pair(ours, theirs, i)
        ratios.append(a / b)
        print(f"  {label} run {i + 1}: segdist {a:6.2f} img/s   baseline {b:6.2f} img/s   ratio {a / b:.3f}x",
              flush=True)
    print(f"  {label}: median ratio {statistics.median(ratios):.3f}x over {repeat} runs", flush=True)


def loader_part(shards: Path, seconds: float) -> None:
    """segdist's loader alone vs the plain loop's DataLoader (PIL + the same augmentation, Normalize)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from plain_loop import FolderDataset, augmentation

    from segdist.config import load_config
    from segdist.data.bench import measure

    cfg = load_config(REPO / "configs/demo.yaml", [f"data.shards={shards}", *SAME_AS_PLAIN])
    for workers in (1, 2):
        ours = measure(cfg, workers, seconds)["images_per_s"]
        dataset = FolderDataset(CAMVID / "train", CAMVID / "trainannot", augmentation((192, 256), 11))
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**6)
        loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=workers)
        images, start = 0, None
        for batch, _ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += batch.shape[0]
            if time.perf_counter() - start >= seconds:
                break
        theirs = images / (time.perf_counter() - start)
        print(f"  loader, {workers} worker(s): segdist {ours:6.1f} img/s   folder Dataset {theirs:6.1f} img/s   "
              f"ratio {ours / theirs:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--processes", default="1,2", help="(a): the process counts to compare")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="(a): a config override for segdist, e.g. model.channels_last=false")
    parser.add_argument("--seconds", type=float, default=20.0, help="(c): measuring time per loader")
    args = parser.parse_args()
    if not CAMVID.is_dir():
        sys.exit(f"{CAMVID} is missing: these benchmarks use the real CamVid beside the repo")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = prepare_camvid(work / "camvid")
        if "a" in args.parts:
            print(f"(a) end to end, real CamVid, U-Net-ResNet18 from scratch, 192x256, batch 8 per process, "
                  f"1 loader worker, Adam, {args.steps} steps ({WARM} left out); segdist's overrides: "
                  f"{args.set or 'none'}:", flush=True)
            for processes in map(int, args.processes.split(",")):
                compare(f"{processes} process(es)",
                        lambda p=processes: segdist_rate(shards, work, p, args.steps, overrides=args.set),
                        lambda p=processes: plain_rate(p, args.steps), args.repeat)
        if "b" in args.parts:
            print("(b) the loop alone, 2 processes (DDP over gloo), one in-memory batch of 8 x 3 x 192 x 256:",
                  flush=True)
            ratios = []
            for i in range(args.repeat):
                ours, bare = measure_pair(lambda: segdist_rate(shards, work, 2, args.steps, True),
                                          lambda: plain_rate(2, args.steps, True), i)
                ratios.append(bare / ours)
                print(f"  run {i + 1}: segdist loop {8 * 2 / ours * 1000:7.1f} ms/step   bare DDP loop "
                      f"{8 * 2 / bare * 1000:7.1f} ms/step   overhead {(bare / ours - 1) * 100:+.1f}%", flush=True)
            print(f"  overhead: median {(statistics.median(ratios) - 1) * 100:+.1f}% (target: at most +5%)")
        if "c" in args.parts:
            print("(c) the loader alone (no model), CamVid, 192x256 crops with random scale and flip, batch 8:")
            loader_part(shards, args.seconds)


if __name__ == "__main__":
    main()
