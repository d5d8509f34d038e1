"""Where a training rank's time goes, sampled: the loop's own share next to the bare DDP loop's.

Wall-clock ratios between two runs on a shared machine move by 10-15% from run to run; a share of
one process's own samples does not. py-spy samples the main thread of every rank (2 processes,
gloo, one in-memory batch) of segdist's loop (benchmarks/segdist_in_memory.py) and of the bare
DDP loop (benchmarks/plain_loop.py --in-memory). Every sample inside the loop is put in one bin:

- compute: the model's forward, the loss, backward (DDP's gradient all-reduce runs inside it, in
  both loops alike), the optimizer step and zero_grad;
- loop: everything else inside the loop: segdist's per-update all-reduce (loss, stop, skips),
  `.item()`, logging, the progress bar, the LR schedule, batch handling.

    pip install -c constraints.txt -e ".[bench]"     (py-spy)
    python benchmarks/loop_profile.py [--steps 30] [--rate 50]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import REPO, SAME_AS_PLAIN, launch, prepare_camvid

LOOPS = {"segdist": re.compile(r"train_one_epoch \(.*segdist/train\.py"),  # the frame that holds each loop
         "bare": re.compile(r"main \(.*plain_loop\.py")}
COMPUTE = ("DistributedDataParallel.forward", "_engine_run_backward", "Adam.step", "zero_grad",  # name endings
           "CrossEntropyLoss.forward", "ZeroIfAllIgnored.forward")
PROCESS = re.compile(r"process (\d+):")


def profile(cmd: list[str], out: Path, rate: int) -> Path:
    """Run `cmd` under py-spy (all subprocesses, not pausing them); the raw folded stacks."""
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when its bin/ is not on PATH
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    spy = spy or sys.exit("py-spy is missing: pip install py-spy")
    subprocess.run([spy, "record", "--subprocesses", "--nonblocking", "--rate", str(rate), "--format", "raw",
                    "--output", str(out), "--", *cmd], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return out


def shares(folded: Path, loop_frame: re.Pattern) -> dict[str, dict[str, int]]:
    """Per process: samples in the loop that are compute and that are the loop's own."""
    bins: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"compute": 0, "loop": 0})
    for line in folded.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        at = next((i for i, f in enumerate(frames) if loop_frame.match(f)), None)
        if at is None:
            continue
        pid = [m.group(1) for f in frames for m in [PROCESS.match(f)] if m][-1]
        inside = frames[at + 1:]
        kind = "compute" if any(f.split(" (", 1)[0].endswith(COMPUTE) for f in inside) else "loop"
        bins[pid][kind] += int(count)
    return dict(bins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = prepare_camvid(work / "camvid")  # its class count; the batches come from memory
        segdist = [*launch(2, accelerate=True), str(REPO / "benchmarks/segdist_in_memory.py"), "--config",
                   str(REPO / "configs/demo.yaml"), f"data.shards={shards}", f"train.runs_dir={work}",
                   "train.name=profile", f"train.max_steps={args.steps}", *SAME_AS_PLAIN]
        bare = [*launch(2, accelerate=False), str(REPO / "benchmarks/plain_loop.py"), "--steps", str(args.steps),
                "--in-memory", "--encoder", "resnet18", "--crop", "192", "256", "--batch", "8"]
        print(f"2 processes (gloo), one in-memory batch of 8 x 3 x 192 x 256, {args.steps} steps, "
              f"py-spy at {args.rate} Hz:")
        for name, cmd in (("segdist", segdist), ("bare", bare)):
            per_process = shares(profile(cmd, work / f"{name}.txt", args.rate), LOOPS[name])
            for pid, n in sorted(per_process.items()):
                total = n["compute"] + n["loop"]
                print(f"  {name:7s} loop, process {pid}: {total} samples in the loop, "
                      f"{100 * n['loop'] / total:.2f}% of them outside the model's compute", flush=True)


if __name__ == "__main__":
    main()
