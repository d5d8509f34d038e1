"""slurm/*.sbatch on a real SLURM cluster of two nodes on this machine (Debian slurm 22.05, two slurmd).

One cluster for the module (tests/slurm_cluster.py): munged, slurmctld and slurmd n1 and n2 on
127.0.0.1, installed with apt-get when missing. The tests run in order and share its outputs:
prepare (Ray over both nodes) writes the shards that training reads, and evaluation scores the
run that training wrote. Every wait is bounded; the daemons are stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import SMALL, constant_class_miou, manifest, read_shards
from slurm_cluster import SlurmCluster, ensure_installed, free_port, missing_programs, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREPARE_MEM_MB = 3000
RANK_LINE = re.compile(r"\[rank (\d+)/(\d+)\] node=(\S+) batches=(\d+) steps=(\d+) weights=(\w+)")


@dataclass
class Job:
    id: int
    info: dict[str, str]  # `scontrol show job` once it finished
    output: str

    @property
    def ok(self) -> bool:
        return self.info.get("JobState") == "COMPLETED" and self.info.get("ExitCode") == "0:0"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    try:
        ensure_installed()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot install SLURM: {exc}")
        pytest.skip(f"SLURM is not installed and cannot be installed here: {exc} (missing {missing_programs()})")
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp")))  # short: socket paths < 108 bytes
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("SEGDIST_KEEP_SLURM_DIR") != "1":  # 1: keep the logs, job outputs and runs
            shutil.rmtree(cluster.root, ignore_errors=True)


def job_env(cluster: SlurmCluster) -> dict[str, str]:
    """What the jobs need on this fake cluster; sbatch exports it (with the rest of our environment)."""
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # segdist, accelerate, ray
        "HEAD_ADDR": "127.0.0.1",  # node names n1/n2 do not resolve here
        "GPUS_PER_NODE": "0",  # CPU mode: one gloo process per node
        "RAY_TEMP_DIR": str(cluster.root / "ray"),
        "RAY_AUTH_MODE": "token",  # the scripts' default: a fresh token per job (pytest's own Ray disables it)
        # Free ports, not the scripts' job-id-derived defaults: job ids restart at 1 in every test
        # cluster, and another test session on this machine may be using the same ones.
        "RAY_PORT": str(free_port()),
        "MASTER_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }


def submit(cluster: SlurmCluster, script: str, *args: str, nodes: int = 2, options: tuple[str, ...] = (),
           env: dict[str, str] | None = None) -> int:
    return cluster.sbatch([f"--nodes={nodes}", f"--chdir={REPO}", f"--output={cluster.root}/jobs/%x-%j.out",
                           *options, REPO / "slurm" / script, *args], env={**job_env(cluster), **(env or {})})


def finish(cluster: SlurmCluster, job_id: int, timeout: float) -> Job:
    info = cluster.wait_until_done(job_id, timeout)
    return Job(job_id, info, cluster.output(job_id))


def ranks(output: str) -> dict[int, dict]:
    """The closing line of every training process, by rank (a requeued job's output holds two runs)."""
    return {int(r): {"world": int(w), "node": node, "batches": int(b), "steps": int(s), "weights": h}
            for r, w, node, b, s, h in RANK_LINE.findall(output)}


def steps_logged(run: Path) -> list[int]:
    log = run / "train_log.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.exists() else []


def ray_processes(tmpdir: Path) -> list[str]:
    """Command lines of live processes started with this Ray temp dir (raylet, GCS, workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(tmpdir) in cmdline:
            found.append(cmdline)
    return found


# --- prepare: a Ray cluster over both nodes -------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(cluster: SlurmCluster) -> tuple[Path, Job]:
    raw, shards = cluster.root / "raw", cluster.root / "shards"
    subprocess.run([sys.executable, "-m", "segdist", "synth", "coco", "--out", str(raw), "--images", "64",
                    "--val-images", "4", "--size", "320x240", "--seed", "3"], check=True, capture_output=True,
                   timeout=120)
    job_id = submit(cluster, "prepare.sbatch", "coco", "--images", str(raw / "train"), "--annotations",
                    str(raw / "annotations/instances_train.json"), "--classes", "person,bicycle,car",
                    "--splits", "train=0.75,val=0.25", "--shard-size", "6", "--out", str(shards),
                    options=(f"--mem={PREPARE_MEM_MB}",))
    return shards, finish(cluster, job_id, timeout=180)


def test_prepare_runs_ray_tasks_on_both_nodes(cluster: SlurmCluster, prepared: tuple[Path, Job]) -> None:
    shards, job = prepared
    assert job.ok, job.output[-5000:]
    # Ray places these small tasks as it likes (one split's may all land on one node): both nodes over the job
    used = re.findall(r"ray: split '\w+' converted in \d+ tasks on \d+ node\(s\): (.*)", job.output)
    assert len({node.split("=")[0] for line in used for node in line.split(", ")}) == 2, job.output[-3000:]
    # each Ray node bounded by the job's allocation: 1 CPU, --mem split into heap + object store
    nodes = re.findall(r"ray node (n\d): (\d+) CPUs, (\d+) bytes heap, (\d+) bytes object store", job.output)
    assert sorted(n[0] for n in nodes) == ["n1", "n2"]
    assert all(int(cpus) == 1 and int(heap) + int(store) == PREPARE_MEM_MB * 2**20 for _, cpus, heap, store in nodes)
    # complete: every split as dataset.json says, nothing half-written
    m = manifest(shards)
    assert set(m["splits"]) == {"train", "val"}
    for split, record in m["splits"].items():
        samples = read_shards(shards, split)
        assert len(samples) == record["samples"] > 0
        assert sorted({Path(s["url"]).name for s in samples}) == [s["name"] for s in record["shards"]]
    assert len(m["splits"]["train"]["shards"]) >= 2  # nodes x processes x loader workers
    assert not [p.name for p in shards.iterdir() if p.name.startswith(".")]  # no .tmp / .progress.json
    # Ray stopped on every node
    assert "prepare.sbatch: Ray stopped" in job.output
    assert ray_processes(cluster.root / "ray") == []


# --- train: one gloo process per node ---------------------------------------------------------------

# Enough steps for the tiny test model to learn something evaluation can tell from a constant guess
# (test_evaluate_scores_the_checkpoint_over_two_nodes); a few seconds more than 4 steps.
TRAIN_STEPS = 60


def train_args(shards: Path, cluster: SlurmCluster, *extra: str) -> list[str]:
    return ["configs/demo.yaml", f"data.shards={shards}", f"train.runs_dir={cluster.root / 'runs'}", *SMALL, *extra]


@pytest.fixture(scope="module")
def trained(cluster: SlurmCluster, prepared: tuple[Path, Job]) -> tuple[Path, Job]:
    shards, _ = prepared
    job_id = submit(cluster, "train.sbatch", *train_args(shards, cluster, f"train.max_steps={TRAIN_STEPS}"))
    return cluster.root / "runs" / f"demo-{job_id}", finish(cluster, job_id, timeout=240)


def test_train_forms_one_process_group_over_two_nodes(trained: tuple[Path, Job]) -> None:
    run, job = trained
    assert job.ok, job.output[-5000:]
    by_rank = ranks(job.output)
    assert set(by_rank) == {0, 1}, job.output[-3000:]
    assert {r["node"] for r in by_rank.values()} == {"n1", "n2"}  # rank 0 and rank 1 on different nodes
    assert all(r["world"] == 2 and r["steps"] == TRAIN_STEPS for r in by_rank.values())
    assert by_rank[0]["weights"] == by_rank[1]["weights"]
    assert "processes were requested but the process group has" not in job.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == TRAIN_STEPS and summary["stop"] == "done"
    assert (run / f"checkpoints/step_{TRAIN_STEPS:08d}/model.safetensors").exists()
    assert steps_logged(run) == list(range(1, TRAIN_STEPS + 1))


def test_a_budget_from_the_allocation_sets_the_steps_that_fit_the_time_left(
        cluster: SlurmCluster, prepared: tuple[Path, Job]) -> None:
    """train.sbatch turns the time left in the allocation into train.budget; segdist writes the step
    count it fits into the run's config (fitting itself: tests/test_training_options.py). The job is
    cancelled once that is done."""
    shards, _ = prepared
    job_id = submit(cluster, "train.sbatch", *train_args(shards, cluster),
                    options=("--time=30",), env={"BUDGET": "allocation", "BUDGET_MARGIN": "60"})
    config = cluster.root / "runs" / f"demo-{job_id}" / "config.yaml"
    wait_for(lambda: config.exists() and re.search(r"max_steps: \d+", config.read_text()), timeout=180,
             what="the budget's step count in config.yaml")
    cluster.run(["scancel", str(job_id)])
    job = finish(cluster, job_id, timeout=120)
    budget = int(re.search(r"left in the allocation: training budget (\d+)s", job.output).group(1))
    assert 1380 <= budget <= 1440  # 30 minutes, less the 300 s pre-emption lead and the 60 s margin
    assert f"budget {budget}s" in job.output and "optimizer steps" in job.output


def test_preemption_checkpoints_requeues_and_resumes(cluster: SlurmCluster, prepared: tuple[Path, Job]) -> None:
    shards, _ = prepared
    total = 60  # the signal must land before the end: steps of the tiny test model are fast
    job_id = submit(cluster, "train.sbatch", *train_args(
        shards, cluster, f"train.max_steps={total}", "train.val_every=100",
        "optim.scheduler=constant"))
    run = cluster.root / "runs" / f"demo-{job_id}"
    wait_for(lambda: len(steps_logged(run)) >= 2, 180, "two training steps",
             diagnose=lambda: f"{cluster.job(job_id)}\n{cluster.output(job_id)[-3000:]}")
    # What slurmctld does at `--signal=B:USR1@SECONDS` before the time limit: SIGUSR1 to the batch shell.
    cluster.run(["scancel", "--batch", "--signal=USR1", str(job_id)])
    requeued = {"Restarts": "1", "JobState": "PENDING"}  # back in the queue, not just asked to be
    wait_for(lambda: requeued.items() <= cluster.job(job_id).items(), 120, "the job to be requeued",
             diagnose=lambda: f"{cluster.job(job_id)}\n{cluster.output(job_id)[-3000:]}")

    # First run: stopped on the signal at the same step everywhere, checkpointed, asked for the requeue.
    first = json.loads((run / "summary.json").read_text())
    stopped = first["steps"]
    assert first["stop"] == "signal" and 2 <= stopped < total, first
    assert (run / f"checkpoints/step_{stopped:08d}/model.safetensors").exists()
    output = cluster.output(job_id)
    # status 0: the launchers outlived SIGUSR1 and waited for their workers (killed by it, they
    # would orphan the workers and srun would report "User defined signal 1")
    assert "training wrote a checkpoint and stopped on SIGUSR1 (srun status 0); requeueing job" in output
    assert {r["steps"] for r in ranks(output).values()} == {stopped}

    # It starts again by itself once SLURM's requeue delay (cred_expire, 10 s here) has passed.
    job = finish(cluster, job_id, timeout=240)
    assert job.ok, job.output[-5000:]
    second = job.output.split(f"job {job_id} (restart 1)", 1)[1]
    assert f"resumed from {run}/checkpoints/step_{stopped:08d} at step {stopped}" in second
    by_rank = ranks(second)
    assert set(by_rank) == {0, 1} and {r["node"] for r in by_rank.values()} == {"n1", "n2"}
    assert all(r["world"] == 2 and r["steps"] == total for r in by_rank.values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop"] == "done" and summary["steps"] == total
    assert steps_logged(run) == list(range(1, total + 1))  # one line per step across both runs


# --- evaluate: the trained run's checkpoint over both nodes -----------------------------------------

def test_evaluate_scores_the_checkpoint_over_two_nodes(cluster: SlurmCluster, prepared: tuple[Path, Job],
                                                       trained: tuple[Path, Job]) -> None:
    shards, _ = prepared
    run, _ = trained
    job = finish(cluster, submit(cluster, "evaluate.sbatch", "--run", str(run), "--checkpoint", "last",
                                 "--split", "val"), timeout=180)
    assert job.ok, job.output[-5000:]
    metrics = json.loads((run / "eval/val/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["checkpoint_step"] == TRAIN_STEPS
    assert metrics["samples"] == manifest(shards)["splits"]["val"]["samples"]  # each sample exactly once
    # The same training and evaluation on 2 gloo processes of one launcher scored 0.516 here (twice,
    # identical); a model predicting one class everywhere scores at most 0.24 on this val split: the floor
    # lies between.
    assert constant_class_miou(metrics["confusion"]) < 0.35 <= metrics["miou"]
    assert "WARNING" not in job.output


def test_predict_shares_the_inputs_over_two_nodes(cluster: SlurmCluster, prepared: tuple[Path, Job],
                                                  trained: tuple[Path, Job]) -> None:
    shards, _ = prepared
    run, _ = trained
    out = cluster.root / "preds"
    job = finish(cluster, submit(cluster, "evaluate.sbatch", "--run", str(run), "--checkpoint", "last",
                                 "--shards", str(shards), "--split", "val", "--out", str(out), "--outputs", "index",
                                 env={"SEGDIST_COMMAND": "predict"}), timeout=180)
    assert job.ok, job.output[-5000:]
    samples = manifest(shards)["splits"]["val"]["samples"]
    written = {int(r): int(n) for r, n in re.findall(r"\[rank (\d+)/2\] wrote (\d+),", job.output)}
    assert set(written) == {0, 1} and sum(written.values()) == samples and min(written.values()) > 0
    assert len(list((out / "index").glob("*.png"))) == samples
