"""Time from a fault to the end of the job, for each fault docs/reliability.md lists.

Each scenario runs a small 2-process CPU (gloo) training job on synthetic data, injects one fault
(SEGDIST_FAULT, see segdist/utils/faults.py, or a real kill -9 / a full tmpfs / a signal) and measures,
from the moment the fault happened (the job's own "injected fault" line, or the kill / signal
sent by this script) to the moment every launcher process has exited. The tests in
tests/test_reliability.py assert the behaviour; this script only measures the times.

    python benchmarks/faults.py            # needs root for the full-disk scenario (mounts a tmpfs)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.crop_size=[64,64]", "data.base_size=96", "data.val_size=96", "data.batch_size=4",
         "data.val_batch_size=4", "data.workers=1", "data.shuffle_window=16", "train.log_every=1",
         "data.epoch_samples=64", "train.checkpoint_every=2", "train.collective_timeout=30"]


class Job:
    """A launched job whose output lines are stamped with their arrival time."""

    def __init__(self, cmds: list[list[str]], env: dict | None = None):
        self.lines: list[tuple[float, str]] = []
        self.procs = [subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))) for c in cmds]
        self.readers = [threading.Thread(target=self._read, args=(p,), daemon=True) for p in self.procs]
        for r in self.readers:
            r.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line))

    def wait_for(self, pattern: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamp, line in list(self.lines):
                if re.search(pattern, line):
                    return stamp
            time.sleep(0.05)
        raise TimeoutError(pattern)

    def wait_exit(self, timeout: float = 300) -> tuple[float, list[int]]:
        codes = [p.wait(timeout=timeout) for p in self.procs]
        for r in self.readers:
            r.join(timeout=10)
        return time.monotonic(), codes

    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def train_cmd(shards: Path, runs: Path, name: str, *extra: str, machines: int = 1, machine_rank: int = 0,
              port: int = 29700) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
              "--num_processes", "2", "--main_process_port", str(port)]
    if machines > 1:
        launch += ["--num_machines", str(machines), "--machine_rank", str(machine_rank),
                   "--main_process_ip", "127.0.0.1"]
    return [*launch, "-m", "segdist", "train", "--config", str(REPO / "configs/demo.yaml"), f"data.shards={shards}",
            f"train.runs_dir={runs}", f"train.name={name}", *SMALL, *extra]


def kill_rank(name: str, rank: int) -> float:
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline, env = " ".join(p.info["cmdline"] or []), p.info["environ"] or {}
            if f"train.name={name}" in cmdline and "accelerate" not in cmdline and env.get("RANK") == str(rank) \
                    and "accelerate" in " ".join(p.parent().cmdline()):
                p.kill()
                return time.monotonic()
        except psutil.Error:
            continue
    raise RuntimeError(f"rank {rank} of {name} not found")


def wait_logged(run: Path, steps: int, timeout: float = 300) -> None:
    """Until the run's train_log.jsonl holds `steps` lines."""
    log, deadline = run / "train_log.jsonl", time.monotonic() + timeout
    while not (log.exists() and len(log.read_text().splitlines()) >= steps):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log} did not reach {steps} steps")
        time.sleep(0.1)


def scenario(label: str, job: Job, fault_time, expect_exit: str) -> dict:  # noqa: ANN001
    fault = fault_time() if callable(fault_time) else fault_time
    end, codes = job.wait_exit()
    errors = job.output().count("segdist: error:")
    return {"fault": label, "seconds": end - fault, "exit": codes, "errors_printed": errors, "expect": expect_exit}


def main() -> None:
    from segdist.cli import main as cli
    from segdist.synth.coco import write_synthetic_coco

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_coco(tmp / "raw", images=40, val_images=9, seed=11, width=128, height=96)
        for split in ("train", "val"):
            cli(["prepare", "coco", "--images", str(tmp / "raw" / split), "--annotations",
                 str(tmp / "raw/annotations" / f"instances_{split}.json"), "--classes", "person,bicycle,car",
                 "--split", split, "--out", str(tmp / "shards"), "--shard-size", "6", "--keep-empty"])
        shards, runs = tmp / "shards", tmp / "runs"
        injected = r"injected fault"
        for label, fault, extra in (
                ("exception in a loader worker", "loader@5", []),
                ("exception in validation", "validation", []),
                ("exception while checkpointing (rank 1)", "checkpoint@2#1", []),
                ("NaN loss (train.nonfinite: stop)", "nan_loss@3#1", []),
                ("kill -9 while a checkpoint is written (every rank)", "kill_in_checkpoint@4", [])):
            job = Job([train_cmd(shards, runs, f"f{len(results)}", "train.max_steps=8", *extra)],
                      env={"SEGDIST_FAULT": fault})
            results.append(scenario(label, job, lambda j=job: j.wait_for(injected), "non-zero"))
        for machines in (1, 2):
            name, port = f"kill{machines}", 29710 + machines
            cmds = [train_cmd(shards, runs, name, "train.max_steps=40", machines=machines, machine_rank=m, port=port)
                    for m in range(machines)]
            job = Job(cmds)
            wait_logged(runs / name, 5)
            results.append(scenario(f"kill -9 of rank 1 ({machines} launcher{'s' if machines > 1 else ''})", job,
                                    kill_rank(name, 1), "non-zero"))
        job = Job([train_cmd(shards, runs, "sig", "train.max_steps=400")])
        wait_logged(runs / "sig", 5)
        sent = time.monotonic()
        for p in psutil.Process(job.procs[0].pid).children(recursive=True):
            try:
                p.send_signal(signal.SIGUSR1)
            except psutil.Error:
                pass
        results.append(scenario("SIGUSR1 to every process (pre-emption notice)", job, sent, "0, checkpoint written"))
        results.append(full_disk(shards, tmp))
    print("| fault | exit status | 'segdist: error' lines | seconds from fault to exit |")
    print("|---|---|---|---:|")
    for r in results:
        print(f"| {r['fault']} | {r['exit']} | {r['errors_printed']} | {r['seconds']:.1f} |")


def full_disk(shards: Path, tmp: Path) -> dict:
    """The second checkpoint (32 MB) does not fit on a 48 MiB tmpfs: time from the error to the exit."""
    mount = tmp / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    try:
        job = Job([train_cmd(shards, mount, "full", "train.max_steps=6", "train.val_every=100", "optim.name=sgd",
                             "optim.momentum=0.0")])
        return scenario("disk full while checkpointing (48 MiB tmpfs; timed from the error message)", job,
                        lambda: job.wait_for(r"could not write checkpoint"), "non-zero")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


if __name__ == "__main__":
    main()
