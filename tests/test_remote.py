"""Shards anywhere: train (2 processes) and evaluate over a real HTTP server and a real S3 server, with faults.

The servers (tests/servers.py) are started and stopped by the fixtures: a fault-injecting HTTP
server on 127.0.0.1, and moto's S3 server (behind the same fault-injecting proxy for S3 faults).
"""

import json
import os
import shutil
import subprocess

import pytest
from helpers import REPO, launcher, rank_lines, run_train, synthetic_shards, train_cmd

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


def test_a_pipe_command_serves_the_shards_each_read_once(local_shards, tmp_path):
    log = tmp_path / "pipe.log"
    shards = f"pipe:echo {{name}} >> {log}; cat {local_shards}/{{name}}"
    run_train(shards, tmp_path, "train.max_steps=20", "data.workers=2", "train.name=pipe", "train.val_every=100")
    train = [s["name"] for s in json.loads((local_shards / "dataset.json").read_text())["splits"]["train"]["shards"]]
    runs = [line for line in log.read_text().split() if line in train]
    assert sorted(runs) == sorted(train)  # 2 epochs of 48 samples: each shard's command ran once (node cache)
    assert _evaluate(tmp_path / "pipe", shards)["confusion"] == _evaluate(tmp_path / "pipe", local_shards)["confusion"]


def test_two_nodes_download_disjoint_shards_once_each_over_kept_alive_connections(local_shards, http_server,
                                                                                   tmp_path):
    url = _served(local_shards, http_server)
    port = launcher()[-1]
    command = train_cmd(url, tmp_path, "train.max_steps=10", "data.workers=2", "train.name=nodes", "data.io_timeout=20",
                        "train.val_every=100", launch=[])
    nodes = [subprocess.Popen([*launcher(2, "--num_machines", "2", "--machine_rank", str(m), "--main_process_ip",
                                         "127.0.0.1", "--main_process_port", port), *command],
                              env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / f"node{m}")), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for m in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-3000:] + outputs[1][-3000:]
    manifest = json.loads((local_shards / "dataset.json").read_text())
    train = {f"/{s['name']}": s["bytes"] for s in manifest["splits"]["train"]["shards"]}
    gets = [r for r in http_server.log if r.method == "GET" and r.path in train]
    epochs = 2  # 10 steps of 5: each node's share of an epoch is 5 x batch 4 of the 23+ samples it holds
    print(f"train shards: {sum(r.body_bytes for r in gets)} bytes in {len(gets)} GETs for {len(train)} shards of "
          f"{sum(train.values())} bytes; {http_server.connections} connections for {len(http_server.log)} requests")
    assert sum(r.body_bytes for r in gets) <= 1.1 * epochs * sum(train.values())  # both nodes together
    assert len(gets) <= 2 * len(train) * epochs
    cached = [{p.name for p in (tmp_path / f"node{m}/segdist/shards").glob("*.tar")} for m in range(2)]
    assert cached[0] and cached[1]
    assert http_server.connections < len(http_server.log)  # connections are kept alive between requests


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
