"""`segdist train`: 2-process DDP on CPU, exact resume, learning, config and data errors."""

import json
import os
import subprocess
import sys

import pytest
from helpers import DEMO_MODEL, REPO, SMALL, launcher, rank_lines, run_cli, run_train, synthetic_shards, train_log


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    """Synthetic COCO, 4 classes, in shards of 7 so that shard sizes are uneven."""
    root = tmp_path_factory.mktemp("train")
    return synthetic_shards(root, images=48, val_images=14, seed=5, width=160, height=120, shard_size=7)


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate_launch(shards, tmp_path):
    out = run_train(shards, tmp_path, "train.max_steps=5", "train.name=ddp", launch=launcher())
    ranks = rank_lines(out)
    assert set(ranks) == {0, 1} and all(r["world"] == 2 for r in ranks.values())
    assert ranks[0]["steps"] == ranks[1]["steps"] == 5
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert "WARNING" not in out
    run = tmp_path / "ddp"
    assert [entry["step"] for entry in train_log(run)] == [1, 2, 3, 4, 5]  # one writer, not two
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(events[0])).Reload()
    assert {"train/loss", "train/lr", "train/images_per_s", "val/miou", "val_iou/background"} <= set(
        tb.Tags()["scalars"])
    assert "val/overlay_0" in tb.Tags()["images"]
    assert len(list((run / "val_overlays").glob("*.png"))) >= 1
    assert (run / "checkpoints/step_00000005/model.safetensors").exists()
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_learns_well_above_all_background(shards, tmp_path):
    out = run_train(shards, tmp_path, *DEMO_MODEL, "train.name=learn", "train.epochs=8", "data.crop_size=[96,96]",
                 "data.base_size=128", "data.val_size=128")
    summary = json.loads((tmp_path / "learn/summary.json").read_text())
    manifest = json.loads((shards / "dataset.json").read_text())
    val = manifest["splits"]["val"]
    # Predicting background everywhere scores IoU = background share for class 0 and 0 elsewhere.
    all_background = val["class_pixels"][0] / sum(val["class_pixels"]) / len(manifest["classes"])
    assert all_background < 0.25
    assert summary["best_miou"] > 0.5, out[-2000:]


def test_config_errors_list_the_choices(tmp_path, capsys):
    cases = {
        "model.arch=segnet": "model.arch 'segnet' is not valid; choose one of unet, unetplusplus, manet",
        "loss.name=tversky": "loss.name 'tversky' is not valid; choose one of ce, weighted_ce",
        "optim.scheduler=onecycle": "optim.scheduler 'onecycle' is not valid; choose one of poly",
        "model.colour=red": "unknown key 'model.colour'; valid: arch, encoder",
        "trainer.epochs=3": "unknown section 'trainer'; valid: data, model",
        "data.crop_size=[100,100]": "must be [H, W], both multiples of 32",
    }
    for override, message in cases.items():
        with pytest.raises(SystemExit):
            run_cli("train", "--config", REPO / "configs/demo.yaml", override)
        assert message in capsys.readouterr().err, override


def test_missing_or_empty_shard_directory(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("train", "--config", REPO / "configs/demo.yaml", f"data.shards={tmp_path / 'nope'}")
    assert "is not a directory; run `segdist prepare" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        run_cli("train", "--config", REPO / "configs/demo.yaml", f"data.shards={tmp_path / 'empty'}")
    assert "dataset.json does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM"])  # SIGUSR1: test_reliability's exact-resume matrix
def test_stop_signal_checkpoints_and_exits_cleanly_then_resumes(shards, tmp_path, signame):
    """The signal goes to the whole process group, DataLoader workers included, as SLURM does."""
    import signal
    import time

    cmd = [sys.executable, "-m", "segdist", "train", "--config", str(REPO / "configs/demo.yaml"),
           f"data.shards={shards}", f"train.runs_dir={tmp_path}", *SMALL, "train.name=pre",
           "train.max_steps=500", "optim.scheduler=constant"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log = tmp_path / "pre/train_log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    os.killpg(proc.pid, getattr(signal, signame))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    summary = json.loads((tmp_path / "pre/summary.json").read_text())
    stopped = summary["steps"]
    assert summary["stop"] == "signal" and 3 <= stopped < 500
    assert (tmp_path / f"pre/checkpoints/step_{stopped:08d}/model.safetensors").exists()
    out = run_train(shards, tmp_path, "train.name=pre", f"train.max_steps={stopped + 2}", "optim.scheduler=constant",
                 resume=True)
    assert f"resumed from {tmp_path / 'pre/checkpoints'}/step_{stopped:08d} at step {stopped}" in out
    assert [e["step"] for e in train_log(tmp_path / "pre")] == list(range(1, stopped + 3))


@pytest.mark.slow
def test_cpu_flag_trap_is_reported(shards, tmp_path):
    """`accelerate launch --cpu --num_processes 2` silently runs one process: segdist says so."""
    trap = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    out = run_train(shards, tmp_path, "train.max_steps=1", "train.name=trap", launch=trap)
    assert "WARNING: 2 processes were requested but the process group has 1" in out
    assert set(rank_lines(out)) == {0}
