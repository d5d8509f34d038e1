"""Faults a training job meets on a cluster: each ends the job in bounded time, or is survived exactly.

Faults are injected with SEGDIST_FAULT (segdist/utils/faults.py) or made for real (kill -9, a full
tmpfs, corrupt shards). Every wait is bounded by a subprocess timeout.
"""

import json
import os
import subprocess
import time

import numpy as np
import psutil
import pytest
from helpers import DEMO_MODEL, REPO, launcher, run_cli, run_train, synthetic_shards, train_cmd, train_log
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

# 2 processes x 2 loader workers, accumulation 2, warmup + poly, dropout, class balancing, EMA:
# 6 batches = 3 updates per epoch, a validation every epoch, 12 updates in all.
MATRIX = ["data.workers=2", "optim.accumulate=2", "optim.scheduler=poly", "optim.warmup_steps=4",
          "model.decoder_dropout=0.2", "data.class_balanced=true", "train.ema_decay=0.9", "data.epoch_samples=48",
          "train.max_steps=12", "train.checkpoint_every=3", "train.keep_last=10", "data.val_batch_size=3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("faults")
    return synthetic_shards(root, images=80, val_images=9, seed=11, width=128, height=96,
                            shard_size=6, keep_empty=True)


def _weights(path):
    return load_file(str(path))


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _assert_same_run(reference, other):
    assert [(e["step"], e["loss"], e["lr"]) for e in train_log(other)] == \
        [(e["step"], e["loss"], e["lr"]) for e in train_log(reference)]
    final = "checkpoints/step_00000012"
    for name in ("model.safetensors", "ema.safetensors"):  # weights and BatchNorm buffers, and their average
        assert _same_tensors(_weights(reference / final / name), _weights(other / final / name)), name
    best_a, best_b = (json.loads((r / "summary.json").read_text()) for r in (reference, other))
    assert (best_a["best_step"], best_a["best_miou"]) == (best_b["best_step"], best_b["best_miou"])
    assert _same_tensors(_weights(reference / "checkpoints/best/ema.safetensors"),
                         _weights(other / "checkpoints/best/ema.safetensors"))


def test_resume_is_exact_after_a_kill_on_an_epoch_end_and_after_a_signal_mid_epoch(shards, tmp_path):
    straight = tmp_path / "straight"
    run_train(shards, tmp_path, *MATRIX, "train.name=straight", launch=launcher())
    # killed right after the step-3 checkpoint, the last batch of epoch 1 (written after its validation)
    run_train(shards, tmp_path, *MATRIX, "train.name=killed", launch=launcher(),
              env={"SEGDIST_FAULT": "kill_after_checkpoint@3"}, expect=-1)
    assert sorted(p.name for p in (tmp_path / "killed/checkpoints").glob("step_*")) == ["step_00000003"]
    out = run_train(shards, tmp_path, *MATRIX, "train.name=killed", launch=launcher(), resume=True)
    assert "resumed from" in out and "step_00000003 at step 3" in out
    _assert_same_run(straight, tmp_path / "killed")
    # rank 1 alone gets SIGUSR1 in the middle of update 5 (of epoch 2's 4..6): every rank stops after it
    out = run_train(shards, tmp_path, *MATRIX, "train.name=signalled", launch=launcher(),
                    env={"SEGDIST_FAULT": "sigusr1@5#1"})
    assert json.loads((tmp_path / "signalled/summary.json").read_text())["stop"] == "signal"
    assert (tmp_path / "signalled/checkpoints/step_00000005").is_dir()
    run_train(shards, tmp_path, *MATRIX, "train.name=signalled", launch=launcher(), resume=True)
    _assert_same_run(straight, tmp_path / "signalled")


def test_a_signal_on_an_epochs_last_batch_validates_that_epoch_after_the_resume(shards, tmp_path):
    common = ["data.epoch_samples=16", "train.max_steps=8", "train.checkpoint_every=100", "data.workers=0"]
    run_train(shards, tmp_path, *common, "train.name=straight")
    run_train(shards, tmp_path, *common, "train.name=cut", env={"SEGDIST_FAULT": "sigusr1@4"})  # epoch 1 = 1..4
    state = json.loads((tmp_path / "cut/checkpoints/step_00000004/segdist_state.json").read_text())
    assert state["batch"] == 4 and state["validated_at"] == 0  # checkpointed before its validation
    out = run_train(shards, tmp_path, *common, "train.name=cut", resume=True)
    assert "epoch 1 step 4: val mIoU" in out  # the resumed run runs the pending validation first
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("straight", "cut"))
    assert (a["best_step"], a["best_miou"]) == (b["best_step"], b["best_miou"])


def _wait(proc: subprocess.Popen, seconds: float) -> tuple[int, str, float]:
    start = time.monotonic()
    out, _ = proc.communicate(timeout=seconds)
    return proc.returncode, out, time.monotonic() - start


def _left_behind(tag: str) -> list[str]:
    """segdist processes (training ranks, loader workers, launchers) of a run still alive."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and tag in " ".join(proc.info["cmdline"] or []):
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'])[:120]}")
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("fault", ["loader@3", "validation", "checkpoint@3#1"])
def test_an_error_anywhere_ends_every_process_in_bounded_time_and_is_printed_once(shards, tmp_path, fault):
    name = f"err-{fault.split('@')[0]}"
    cmd = train_cmd(shards, tmp_path, "train.max_steps=6", "data.epoch_samples=32", f"train.name={name}",
                    "train.checkpoint_every=3", launch=launcher())
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, SEGDIST_FAULT=fault, PYTHONUNBUFFERED="1"))
    code, out, _ = _wait(proc, 180)
    assert code != 0, out[-3000:]
    assert out.count("segdist: error:") == 1, out[-5000:]
    assert "injected fault" in out or "could not write checkpoint" in out
    if fault.startswith("checkpoint"):
        assert f"could not write checkpoint {tmp_path / name / 'checkpoints/step_00000003'}" in out
        assert not list((tmp_path / name / "checkpoints").glob("step_00000003*"))
    deadline = time.monotonic() + 15  # loader workers notice their parent is gone within seconds
    while _left_behind(f"train.name={name}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _left_behind(f"train.name={name}")


def _start(machines: int, segdist_cmd: list[str]) -> list[subprocess.Popen]:
    """Start `segdist_cmd` (train_cmd(..., launch=[])) on 2 processes: one launcher, or one per "machine"."""
    if machines == 1:
        launches = [launcher()]
    else:  # two launchers on this host, one machine each, as two nodes would run
        port = launcher()[-1]
        launches = [launcher(2, "--num_machines", "2", "--machine_rank", str(m), "--main_process_ip", "127.0.0.1",
                             "--main_process_port", port) for m in range(machines)]
    return [subprocess.Popen([*launch, *segdist_cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for launch in launches]


def _kill_rank_when_logged(proc: subprocess.Popen, run, step: int, rank: int, tag: str) -> float:
    """SIGKILL training rank `rank` once the run logged `step`; returns the time of the kill."""
    deadline = time.monotonic() + 180
    log = run / "train_log.jsonl"
    while not (log.exists() and len(log.read_text().splitlines()) >= step):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or [])
            env = p.info["environ"] or {}
        except psutil.Error:
            continue
        if tag in cmdline and "accelerate" not in cmdline and env.get("RANK") == str(rank) \
                and p.parent() and "accelerate" in " ".join(p.parent().cmdline()):
            p.kill()
            return time.monotonic()
    raise AssertionError(f"no process of rank {rank} found")


# Two launchers, as on two nodes: the survivors must notice by themselves (socket or collective
# timeout). With one launcher torchrun's agent also ends the others; the error paths below cover it.
@pytest.mark.parametrize("machines", [2])
def test_kill_9_of_one_rank_ends_the_job_names_the_rank_and_resume_reaches_the_same_weights(
        shards, tmp_path, machines):
    # killed at step 5 of 24: the margin lets the kill land before the end even at the tiny model's pace
    common = ["train.max_steps=24", "data.epoch_samples=32", "train.checkpoint_every=2", "train.keep_last=20",
              "train.collective_timeout=20"]
    name = f"kill{machines}"
    procs = _start(machines, train_cmd(shards, tmp_path, *common, f"train.name={name}", launch=[]))
    killed_at = _kill_rank_when_logged(procs[0], tmp_path / name, step=5, rank=1, tag=f"train.name={name}")
    results = [_wait(p, 120) for p in procs]
    took = max(time.monotonic() - killed_at, 0)
    out = "".join(r[1] for r in results)
    assert all(code != 0 for code, _, _ in results), out[-4000:]
    assert took < 60, f"the job took {took:.0f} s to end after the kill"
    # segdist's own report from the survivor (segdist/distributed.py), not torchrun's "rank: 1" summary
    assert "segdist: error: rank 0 lost contact with rank(s) 1 (killed, crashed or unreachable)" in out, out[-4000:]
    deadline = time.monotonic() + 15
    while _left_behind(f"train.name={name}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _left_behind(f"train.name={name}")
    # the same process layout as the killed job (threads per process follow it, and so do the numerics)
    for cmd in (train_cmd(shards, tmp_path, *common, f"train.name={name}", launch=[], resume=True),
                train_cmd(shards, tmp_path, *common, f"train.name={name}-straight", launch=[])):
        assert all(code == 0 for code, _, _ in (_wait(p, 600) for p in _start(machines, cmd)))
    assert _same_tensors(_weights(tmp_path / name / "checkpoints/step_00000024/model.safetensors"),
                         _weights(tmp_path / f"{name}-straight/checkpoints/step_00000024/model.safetensors"))


def test_a_rank_that_can_read_no_data_ends_every_rank_at_the_same_step_with_its_message(shards, tmp_path):
    """The loader's "no readable sample" used to stop its rank alone: the other waited in an all-reduce
    for train.collective_timeout (here 300 s) before the job ended."""
    began = time.monotonic()
    out = run_train(shards, tmp_path, "train.max_steps=40", "train.name=dry", "data.workers=1",
                    "train.collective_timeout=300", launch=launcher(), env={"SEGDIST_FAULT": "unreadable#1"},
                    expect=-1)
    took = time.monotonic() - began
    assert "rank 1: no readable training sample in 8 batches" in out, out[-3000:]
    assert "timed out" not in out.lower() and took < 150, (took, out[-2000:])


def test_kill_9_while_a_checkpoint_is_written_keeps_the_previous_one_and_resume_ignores_the_partial(
        shards, tmp_path):
    common = ["train.max_steps=6", "data.epoch_samples=64", "train.checkpoint_every=2", "train.keep_last=10"]
    run_train(shards, tmp_path, *common, "train.name=partial", launch=launcher(),
              env={"SEGDIST_FAULT": "kill_in_checkpoint@4"}, expect=-1)
    checkpoints = tmp_path / "partial/checkpoints"
    assert (checkpoints / "step_00000002/segdist_complete.json").is_file()
    assert (checkpoints / ".step_00000004.tmp").is_dir()  # written by every rank, never marked complete
    assert not (checkpoints / "step_00000004").exists()
    out = run_train(shards, tmp_path, *common, "train.name=partial", launch=launcher(), resume=True)
    assert "step_00000002 at step 2" in out
    assert [e["step"] for e in train_log(tmp_path / "partial")] == list(range(1, 7))
    run_train(shards, tmp_path, *common, "train.name=whole", launch=launcher())
    assert _same_tensors(_weights(checkpoints / "step_00000006/model.safetensors"),
                         _weights(tmp_path / "whole/checkpoints/step_00000006/model.safetensors"))


def test_resume_refuses_an_incomplete_checkpoint_and_takes_the_latest_complete(shards, tmp_path, capsys):
    run_train(shards, tmp_path, "train.max_steps=4", "data.epoch_samples=64", "train.checkpoint_every=2",
              "train.name=r", "data.workers=0")
    checkpoints = tmp_path / "r/checkpoints"
    (checkpoints / "step_00000004/random_states_0.json").unlink()  # a rank's file is missing
    out = run_train(shards, tmp_path, "train.max_steps=6", "data.epoch_samples=64", "train.checkpoint_every=2",
                    "train.name=r", "data.workers=0", resume=True)
    assert "ignoring incomplete checkpoint(s) step_00000004" in out and "step_00000002 at step 2" in out
    (checkpoints / "step_00000006/segdist_complete.json").unlink()
    with pytest.raises(SystemExit):
        run_cli("train", "--config", REPO / "configs/demo.yaml", f"data.shards={shards}",
                f"train.runs_dir={tmp_path}", "train.name=r", "--resume-from", checkpoints / "step_00000006")
    assert "is not a complete segdist checkpoint (missing segdist_complete.json)" in capsys.readouterr().err


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 48 MiB tmpfs: room for one checkpoint (U-Net-ResNet10t weights, 32 MB; SGD without momentum
    keeps no state), not for two."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"this test mounts a tmpfs and needs root: {result.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_previous_checkpoint(shards, small_tmpfs):
    out = run_train(shards, small_tmpfs, *DEMO_MODEL, "train.max_steps=6", "data.epoch_samples=64",
                    "train.checkpoint_every=2", "train.name=full", "train.val_every=100", "optim.name=sgd",
                    "optim.momentum=0.0", launch=launcher(), expect=-1)
    checkpoints = small_tmpfs / "full/checkpoints"
    assert f"could not write checkpoint {checkpoints / 'step_00000004'}" in out
    assert "No space left on device" in out or "Errno 28" in out, out[-3000:]
    assert out.count("segdist: error:") == 1
    assert (checkpoints / "step_00000002/segdist_complete.json").is_file()
    assert not [p.name for p in checkpoints.iterdir() if "00000004" in p.name]


def test_a_nonfinite_loss_stops_by_default_naming_the_step_and_saves_no_nonfinite_weights(shards, tmp_path):
    out = run_train(shards, tmp_path, "train.max_steps=6", "data.epoch_samples=64", "train.checkpoint_every=2",
                    "train.name=nan", launch=launcher(), env={"SEGDIST_FAULT": "nan_loss@3#1"}, expect=-1)
    assert "non-finite loss at step 3" in out and out.count("segdist: error:") == 1
    summary = json.loads((tmp_path / "nan/summary.json").read_text())
    assert summary["stop"] == "nonfinite" and summary["steps"] == 3
    for path in (tmp_path / "nan/checkpoints").rglob("*.safetensors"):
        assert all(np.isfinite(t).all() for t in _weights(path).values() if t.dtype.kind == "f"), path


def test_skip_mode_skips_nonfinite_updates_on_every_rank_and_counts_them(shards, tmp_path):
    out = run_train(shards, tmp_path, "train.max_steps=6", "data.epoch_samples=64", "train.name=skip",
                    "train.nonfinite=skip", launch=launcher(), env={"SEGDIST_FAULT": "nan_loss@2#0,nan_loss@4#1"})
    summary = json.loads((tmp_path / "skip/summary.json").read_text())
    assert summary["stop"] == "done" and summary["steps"] == 6 and summary["nonfinite_skipped"] == 2
    assert "non-finite loss at step 2" in out and "non-finite loss at step 4" in out
    ranks = __import__("helpers").rank_lines(out)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    losses = {e["step"]: e["loss"] for e in train_log(tmp_path / "skip")}
    assert np.isnan(losses[2]) and np.isnan(losses[4]) and np.isfinite(losses[6])
    # a run that only ever meets non-finite losses gives up after train.max_nonfinite in a row
    run_train(shards, tmp_path, "train.max_steps=6", "data.epoch_samples=64", "train.name=giveup",
              "train.nonfinite=skip", "train.max_nonfinite=3", "data.workers=0", env={"SEGDIST_FAULT": "nan_loss"},
              expect=2)
    assert json.loads((tmp_path / "giveup/summary.json").read_text())["steps"] == 3


def _member_offsets(tar_path):
    import tarfile

    with tarfile.open(tar_path) as tar:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def _corrupt_copy(src, dst):
    """A copy of a dataset whose first three train shards hold an undecodable image, a tar cut in
    the middle of a member, and a tar cut in the middle of a header; and a val shard with a bad image."""
    import shutil

    shutil.copytree(src, dst)
    m = json.loads((dst / "dataset.json").read_text())
    train = [dst / s["name"] for s in m["splits"]["train"]["shards"]]
    name, _, data_at, size = _member_offsets(train[0])[0]
    assert name.endswith(".jpg")
    with open(train[0], "r+b") as f:  # same length, so the manifest's byte offsets stay right
        f.seek(data_at)
        f.write(b"\0" * size)
    _, _, data_at, size = _member_offsets(train[1])[4]
    os.truncate(train[1], data_at + size // 2)
    _, header_at, _, _ = _member_offsets(train[2])[7]
    os.truncate(train[2], header_at + 100)
    for shard in m["splits"]["train"]["shards"][1:3]:  # as an older manifest would: no size, so the cut shows
        del shard["bytes"], shard["sha256"]  # while reading (a recorded size catches it on open: test_shard_integrity)
    (dst / "dataset.json").write_text(json.dumps(m))
    val = dst / m["splits"]["val"]["shards"][0]["name"]
    _, _, data_at, size = _member_offsets(val)[3]  # the second sample's image
    with open(val, "r+b") as f:
        f.seek(data_at)
        f.write(b"\xff" * size)
    return dst


def test_corrupt_samples_are_skipped_and_counted_on_every_rank_and_evaluation_reports_them(shards, tmp_path):
    bad = _corrupt_copy(shards, tmp_path / "bad_shards")
    out = run_train(bad, tmp_path, "train.max_steps=10", "data.epoch_samples=80", "train.name=bad",
                    "train.log_every=2", launch=launcher())
    ranks = __import__("helpers").rank_lines(out)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 10 and ranks[0]["weights"] == ranks[1]["weights"]
    summary = json.loads((tmp_path / "bad/summary.json").read_text())
    skipped = summary["data_skipped"]
    assert skipped["undecodable"] >= 1 and skipped["truncated_shard"] >= 2, skipped
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "bad/tb")).Reload()
    assert {"train/skipped_undecodable", "train/skipped_truncated_shard"} <= set(events.Tags()["scalars"])
    assert "validation could not read 1 sample(s)" in out
    report = __import__("segdist.evaluation.evaluate", fromlist=["evaluate"]).evaluate(
        tmp_path / "bad", checkpoint="last", workers=0)
    total = json.loads((bad / "dataset.json").read_text())["splits"]["val"]["samples"]
    assert report["unreadable_samples"] == 1 and report["samples"] == total - 1
    assert report["unreadable_examples"][0][1] == "undecodable"


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_last_validation_equals_segdist_evaluate_on_that_checkpoint(shards, tmp_path, precision):
    import torch

    if precision == "bf16" and not torch.cpu._is_avx512_bf16_supported() and not torch.cuda.is_available():
        # bf16 autocast runs on any x86 CPU through emulation; say which path this machine took
        print("bf16 on this CPU is emulated (no AVX512-BF16)")
    run_train(shards, tmp_path, "train.max_steps=4", "data.epoch_samples=64", "train.name=score",
              f"train.mixed_precision={precision}", "data.workers=0")
    summary = json.loads((tmp_path / "score/summary.json").read_text())
    from segdist.evaluation.evaluate import evaluate

    report = evaluate(tmp_path / "score", checkpoint="last", workers=0)
    assert report["precision"] == precision
    assert report["miou"] == summary["last_miou"]
