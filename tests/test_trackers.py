"""Experiment trackers through accelerate: TensorBoard, W&B (offline) and MLflow (local store), read back."""

import json
import struct
from pathlib import Path

import pytest
from helpers import run_cli, run_train, synthetic_shards

SCALARS = {"train/loss", "train/lr", "train/images_per_s", "train/data_wait_share", "val/miou", "val_iou/person"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, ray_cluster):
    """One run logging to all three trackers at once."""
    root = tmp_path_factory.mktemp("trackers")
    synthetic_shards(root, images=12, val_images=4, seed=6, width=96, height=64, keep_empty=True)
    env = {"WANDB_MODE": "offline", "MLFLOW_TRACKING_URI": f"file://{root / 'mlruns'}",
           "MLFLOW_ALLOW_FILE_STORE": "true"}
    run_train(root / "shards", root / "runs", "train.max_steps=4", "train.log_every=2", "data.workers=0",
              "train.name=tracked", "train.project=segdist-tests", "train.log_with=[tensorboard, wandb, mlflow]",
              env=env)
    return root


def wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (LevelDB log framing: 32 KiB blocks of
    [crc32, length, type] + payload; wandb 0.31 ships no Python reader for it)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_tensorboard_gets_scalars_and_overlays(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "runs/tracked/tb")).Reload()
    assert SCALARS <= set(events.Tags()["scalars"])
    assert "val/overlay_0" in events.Tags()["images"]


def test_wandb_offline_run_holds_the_config_scalars_and_overlay_images(tracked):
    (run_file,) = (tracked / "runs/tracked/wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    history = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert SCALARS <= set(history)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "tracked" and run.project == "segdist-tests"
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["optim.lr"] == 0.003
    assert list(run_file.parent.glob("files/media/images/val/overlay_0_*.png"))


def test_mlflow_local_store_holds_the_metrics_and_overlay_images(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file://{tracked / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "segdist-tests"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and SCALARS <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4]
    assert run.data.params["optim.lr"] == "0.003"
    assert client.list_artifacts(run.info.run_id, "images")


def test_an_unknown_or_missing_tracker_is_refused_at_start(tmp_path, capsys):
    from helpers import REPO

    with pytest.raises(SystemExit):
        run_cli("train", "--config", REPO / "configs/demo.yaml", "train.log_with=[tensorboard, neptune]")
    assert "train.log_with 'neptune' is not valid; choose one of tensorboard, wandb, mlflow" in \
        capsys.readouterr().err
