"""Shards anywhere: train (2 processes) and evaluate over a real HTTP server and a real S3 server, with faults.

The servers (tests/servers.py) are started and stopped by the fixtures: a fault-injecting HTTP
server on 127.0.0.1, and moto's S3 server (behind the same fault-injecting proxy for S3 faults).
"""

import json
import shutil

import pytest
from helpers import launcher, rank_lines, run_train, synthetic_shards

pytestmark = pytest.mark.slow
TRAIN = ["train.max_steps=6", "data.epoch_samples=48", "data.retries=3", "train.log_every=2"]


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("remote")
    return synthetic_shards(root, images=48, val_images=9, seed=4, width=128, height=96,
                            shard_size=5, keep_empty=True)


def _served(local_shards, server):
    """Copy the dataset into the server's directory; its URL."""
    for path in local_shards.iterdir():
        shutil.copy(path, server.root / path.name)
    return server.url


def _evaluate(run, shards):
    from segdist.evaluation.evaluate import evaluate

    return evaluate(run, checkpoint="last", shards=shards, workers=0)


def test_train_and_evaluate_over_http_survive_dropped_connections_and_503s(local_shards, http_server, tmp_path):
    url = _served(local_shards, http_server)
    manifest = json.loads((local_shards / "dataset.json").read_text())
    train_shards = [s["name"] for s in manifest["splits"]["train"]["shards"]]
    val_shard = manifest["splits"]["val"]["shards"][0]["name"]
    for name in train_shards:  # every training shard: its first read breaks off, the next answers 503
        http_server.drop_connection(f"/{name}", times=1, after_bytes=3000)
        http_server.fail(f"/{name}", times=1, status=503)
    http_server.drop_connection(f"/{val_shard}", times=1, after_bytes=2000)
    out = run_train(url, tmp_path, *TRAIN, "train.name=http", launch=launcher())
    ranks = rank_lines(out)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6 and ranks[0]["weights"] == ranks[1]["weights"]
    summary = json.loads((tmp_path / "http/summary.json").read_text())
    assert summary["storage_retries"] >= 2 and summary["unavailable_shards"] == {}
    assert not any(summary["data_skipped"].values()), summary["data_skipped"]
    ranged = [r for r in http_server.requests(f"/{train_shards[0]}") if r.range_start]
    assert ranged, "a dropped connection is resumed with a Range request"
    remote, local = _evaluate(tmp_path / "http", url), _evaluate(tmp_path / "http", local_shards)
    assert remote["confusion"] == local["confusion"] and remote["samples"] == 9 and remote["unreadable_samples"] == 0


def test_a_shard_that_stays_unavailable_is_counted_and_skipped_on_every_rank(local_shards, http_server, tmp_path):
    url = _served(local_shards, http_server)
    manifest = json.loads((local_shards / "dataset.json").read_text())
    dead = manifest["splits"]["train"]["shards"][1]["name"]
    http_server.fail(f"/{dead}", times=10**6, status=503)
    out = run_train(url, tmp_path, *TRAIN, "train.name=dead", "data.io_timeout=5", launch=launcher())
    ranks = rank_lines(out)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6
    summary = json.loads((tmp_path / "dead/summary.json").read_text())
    assert summary["data_skipped"]["unavailable_shard"] >= 1
    assert list(summary["unavailable_shards"]) == [f"{url}/{dead}"]
    assert f"skipped shard {url}/{dead}" in out


def test_a_pipe_command_serves_the_shards(local_shards, tmp_path):
    shards = f"pipe:cat {local_shards}/{{name}}"
    run_train(shards, tmp_path, "train.max_steps=2", "data.epoch_samples=16", "data.workers=0", "train.name=pipe")
    assert _evaluate(tmp_path / "pipe", shards)["confusion"] == _evaluate(tmp_path / "pipe", local_shards)["confusion"]


def test_s3_with_a_local_cache_and_faults(local_shards, s3_bucket, s3_proxy, tmp_path):
    from segdist import storage

    prefix = f"{s3_bucket}/coco3"
    for path in sorted(local_shards.iterdir()):
        storage.publish_file(path, storage.join(prefix, path.name))
    manifest = json.loads((local_shards / "dataset.json").read_text())
    bucket = s3_bucket.removeprefix("s3://")
    first = manifest["splits"]["train"]["shards"][0]["name"]
    s3_proxy.fail(f"/{bucket}/coco3/{first}", times=2, status=503)
    cache = tmp_path / "cache"
    out = run_train(prefix, tmp_path, *TRAIN, "train.name=s3", f"data.cache_dir={cache}", launch=launcher())
    assert rank_lines(out)[0]["steps"] == 6
    summary = json.loads((tmp_path / "s3/summary.json").read_text())
    assert summary["storage_retries"] >= 1 and summary["unavailable_shards"] == {}
    cached = sorted(p.name for p in cache.rglob("*.tar"))
    assert cached and len(cached) == len(set(cached))
    gets = [r for r in s3_proxy.log if r.method == "GET" and r.path.endswith(".tar") and r.status in (200, 206)]
    downloaded = {r.path for r in gets}
    assert len(gets) == len(downloaded), "each shard is downloaded once per node, whatever the process count"
    assert _evaluate(tmp_path / "s3", prefix)["confusion"] == _evaluate(tmp_path / "s3", local_shards)["confusion"]


def test_prepare_to_s3_uploads_the_manifest_last_and_resumes_an_interrupted_upload(local_shards, s3_bucket, s3_proxy,
                                                                                    tmp_path, capsys):
    from helpers import run_cli

    from segdist import storage

    raw, prefix = local_shards.parent / "raw", f"{s3_bucket}/prepared"
    bucket = s3_bucket.removeprefix("s3://")
    argv = ["prepare", "coco", "--images", raw / "train", "--annotations", raw / "annotations/instances_train.json",
            "--classes", "person,bicycle,car", "--split", "train", "--out", prefix, "--shard-size", "5",
            "--keep-empty", "--work-dir", tmp_path / "work"]
    failing = f"/{bucket}/prepared/train-000002.tar"
    s3_proxy.fail(failing, times=1000, status=503)
    with pytest.raises(SystemExit):
        run_cli(*argv)
    assert "could not upload" in capsys.readouterr().err
    assert "dataset.json" not in storage.list_names(prefix)  # nothing a reader would take for a dataset
    s3_proxy.reset()
    run_cli(*argv)  # resumes: uploads what is missing, converts nothing again
    assert "already converted for these inputs" in capsys.readouterr().out
    puts = [r.path for r in s3_proxy.log if r.method == "PUT" and r.status == 200]
    assert puts == [failing, f"/{bucket}/prepared/dataset.json"]  # only the missing shard, the manifest last
    assert not (tmp_path / "work").exists()
    expected = json.loads((local_shards / "dataset.json").read_text())["splits"]["train"]
    got = storage.read_json(storage.join(prefix, "dataset.json"))["splits"]["train"]
    assert [p["name"] for p in got["shards"]] == [p["name"] for p in expected["shards"]]
    for part in got["shards"]:  # every object whole: the bytes of the local prepare of the same inputs
        assert storage.read_bytes(storage.join(prefix, part["name"])) == (local_shards / part["name"]).read_bytes()
    with pytest.raises(SystemExit):  # as for a local --out
        run_cli(*argv)
    assert "already holds split 'train'" in capsys.readouterr().err
