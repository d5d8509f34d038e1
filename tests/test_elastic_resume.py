"""Resume on another shape: every later step trains on the samples the uninterrupted run trained on.

2 gloo processes x 2 loader workers, per-process batch 4: a global batch of 8, 5 updates per epoch
(40 samples), 14 updates in all. Stopped by a step checkpoint, by SIGUSR1 mid-epoch, exactly at an
epoch's end and in the third epoch; resumed on 1 process (accumulation 2) and on 2 processes x 1
worker. samples.jsonl (train.record_samples) says which sample keys every rank trained on at each step.
Resumed on another global batch (1 process x 6, 3 processes x 4), the epoch goes on from the
checkpoint's place in its order and the LR schedule over the samples left.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import launcher, run_train, synthetic_shards
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

RUN = ["data.workers=2", "train.max_steps=14", "train.checkpoint_every=3", "train.keep_last=10",
       "train.record_samples=true", "optim.scheduler=poly", "optim.warmup_steps=2", "train.val_every=2"]
FINAL = "checkpoints/step_00000014/model.safetensors"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    return synthetic_shards(tmp_path_factory.mktemp("elastic"), images=40, val_images=8, seed=5, width=96,
                            height=80, shard_size=7, keep_empty=True)


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    run_train(shards, runs, *RUN, "train.name=straight", launch=launcher(2))
    return runs / "straight"


def step_keys(run: Path) -> dict[int, list[str]]:
    """Every step's keys over all ranks, in rank order (rank 0's micro-batches first)."""
    lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    steps: dict[int, dict[int, list[str]]] = {}
    for line in lines:
        assert line["rank"] not in steps.setdefault(line["step"], {}), f"step {line['step']} written twice"
        steps[line["step"]][line["rank"]] = line["keys"]
    return {step: [k for rank in sorted(by_rank) for k in by_rank[rank]] for step, by_rank in steps.items()}


def weights(run: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in load_file(str(run / FINAL)).items() if "running_" not in k and "num_batches" not in k}


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def assert_continues(straight: Path, resumed: Path, exact: bool, resumed_at: int) -> None:
    assert step_keys(resumed) == step_keys(straight)  # every step, before and after the resume
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    if exact:
        assert all(np.array_equal(a[name], b[name]) for name in a) and losses(resumed) == losses(straight)
        return
    # One process accumulating two micro-batches sums the gradients in another order than DDP's all-reduce:
    # the losses agree to ~1e-6 at first, and Adam carries the rounding on; a wrong batch would differ by ~1e-1.
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-3)
    start = {k: v for k, v in load_file(str(resumed / f"checkpoints/step_{resumed_at:08d}/model.safetensors")).items()
             if k in a}
    apart = np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))
    trained = np.sqrt(sum(((a[k] - start[k]) ** 2).sum() for k in a))
    # measured: 0.084 of the distance trained since the checkpoint with order v2 (v1's batches: under 0.05);
    # Adam turns a rounding difference in a near-zero gradient into a whole step of its sign
    assert apart < 0.15 * trained, (apart, trained)


def copy_run(straight: Path, name: str) -> Path:
    target = straight.with_name(name)
    shutil.copytree(straight, target)
    return target


def test_every_epoch_reads_each_sample_once_on_every_rank(straight):
    keys = step_keys(straight)
    assert sorted(keys) == list(range(1, 15)) and all(len(k) == 8 for k in keys.values())
    for first in (1, 6, 11):  # epochs of 5 updates: steps 1-5, 6-10, 11-14 (the third cut by max_steps)
        epoch = [k for step in range(first, min(first + 5, 15)) for k in keys[step]]
        assert len(epoch) == len(set(epoch))  # no sample twice in an epoch
    assert len({k for step in range(1, 6) for k in keys[step]}) == 40  # the first: all 40, 8 at a time
    assert json.loads((straight / "summary.json").read_text())["samples_decoded"] == 14 * 8


def test_a_step_checkpoint_resumes_on_one_process_with_accumulation_two(shards, straight):
    run = copy_run(straight, "from_step_3")
    out = run_train(shards, run.parent, *RUN, "train.name=from_step_3",
                    f"--resume-from={run / 'checkpoints/step_00000003'}")
    assert "resuming a global batch of 8 samples on 1 process(es): optim.accumulate 1 -> 2" in out
    assert "resumed from" in out and "at step 3" in out
    assert_continues(straight, run, exact=False, resumed_at=3)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["samples_decoded"] == (14 - 3) * 8  # nothing replayed


@pytest.mark.parametrize("stop,then,exact", [(4, "2x1", True), (5, "1", False), (12, "2x1", True)],
                         ids=["signal_mid_epoch_then_one_worker", "signal_at_an_epoch_end_then_one_process",
                              "signal_in_the_third_epoch_then_one_worker"])
def test_a_signal_resumes_on_another_shape_with_the_same_samples(shards, straight, tmp_path, stop, then, exact):
    name = f"cut{stop}"
    out = run_train(shards, tmp_path, *RUN, f"train.name={name}", launch=launcher(2),
                    env={"SEGDIST_FAULT": f"sigusr1@{stop}#1"})  # rank 1 alone is signalled: both stop
    run = tmp_path / name
    assert json.loads((run / "summary.json").read_text())["stop"] == "signal", out[-2000:]
    shape = ["data.workers=1"] if then == "2x1" else []
    resumed = run_train(shards, tmp_path, *RUN, f"train.name={name}", *shape,
                        launch=launcher(2) if then == "2x1" else None, resume=True)
    assert f"at step {stop}" in resumed
    assert_continues(straight, run, exact, resumed_at=stop)
    assert json.loads((run / "summary.json").read_text())["samples_decoded"] == (14 - stop) * 8


def epoch_keys(run: Path) -> dict[int, list[str]]:
    """Every epoch's sample keys over all steps and ranks (samples.jsonl's epoch of each step)."""
    epochs: dict[int, list[str]] = {}
    for line in (run / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        epochs.setdefault(record["epoch"], []).extend(record["keys"])
    return epochs


def lr_at(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {line["step"]: line["lr"] for line in lines}


@pytest.mark.parametrize("then,overrides,global_batch,steps", [
    ("1x6", ["data.batch_size=6"], 6, 15),  # 88 samples left = 14.7 steps of 6
    ("3x4", [], 12, 7),  # 8 samples cannot be cut over 3 processes: the configured 4 x 3
], ids=["one_process_batch_6", "three_processes"])
def test_a_resume_on_another_global_batch_reads_every_sample_of_the_epoch_once(
        shards, straight, then, overrides, global_batch, steps):
    run = copy_run(straight, f"to_{then}")
    out = run_train(shards, run.parent, *RUN, f"train.name=to_{then}", *overrides,
                    f"--resume-from={run / 'checkpoints/step_00000003'}", launch=launcher(3) if then == "3x4" else None)
    assert f"global batch changes from 8 to {global_batch}" in out or f"= {global_batch} samples a batch" in out, out
    assert "continuing at sample 24 of epoch 0" in out and f"it ends at step {3 + steps}" in out
    epochs = epoch_keys(run)
    assert len(epochs[0]) == 24 + (40 - 24) // global_batch * global_batch  # 3 old steps, the rest in whole batches
    for keys in epochs.values():
        assert len(keys) == len(set(keys))  # no sample twice in an epoch
    assert len(epochs[1]) == 40 // global_batch * global_batch
    summary = json.loads((run / "summary.json").read_text())
    assert summary["max_steps"] == 3 + steps and summary["samples_decoded"] == steps * global_batch
    lr = lr_at(run)
    assert lr[3] == lr_at(straight)[3] and 0.75 * lr[3] < lr[4] < lr[3]  # the poly decay goes on from where it was
    assert lr[3 + steps] == pytest.approx(lr_at(straight)[14], rel=0.05)  # and ends where it would have
    state = json.loads((run / f"checkpoints/step_{3 + steps:08d}/segdist_state.json").read_text())
    assert state["order"]["origin"] == {"update": 3, "epoch": 0, "sample": 24, "nodes": 1}
    assert state["replans"] == [[3, 3 + steps]]


def test_a_resume_on_data_that_changed_is_refused_and_writes_nothing(shards, straight, tmp_path):
    run = copy_run(straight, "refused")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    other = synthetic_shards(tmp_path / "other", images=40, val_images=8, seed=6, width=96, height=80,
                             shard_size=7, keep_empty=True)
    out = run_train(other, run.parent, *RUN, "train.name=refused", resume=True, expect=2)
    assert "the training data changed since the checkpoint" in out
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
