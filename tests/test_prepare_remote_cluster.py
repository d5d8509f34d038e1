"""`segdist prepare --address` on a 2-node Ray cluster from and into moto's S3: no shared disk, tasks on both nodes.

Two Ray nodes on this machine (`ray start --head` and `ray start --address`, one CPU each, each its
own raylet and node id) stand for two machines: the driver, a third process, hands them only the
small shard records' work; each task reads its images from S3 and uploads its own shard.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import free_port, run_cli
from test_prepare_remote import _tiny_coco, assert_same_dataset, upload

pytestmark = pytest.mark.slow
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
NODE = ["--block", "--num-cpus=1", "--memory=1000000000", "--object-store-memory=100000000",
        "--node-ip-address=127.0.0.1"]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for_nodes(address: str, count: int, env: dict, nodes: list[subprocess.Popen]) -> None:
    deadline = time.time() + 90
    while True:
        status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
        active = status.stdout.split("Pending:")[0] if status.returncode == 0 else ""
        if len(re.findall(r"\bnode_[0-9a-f]+", active)) >= count:
            return
        assert all(node.poll() is None for node in nodes), "a ray node exited"
        assert time.time() < deadline, f"{count} ray nodes did not come up in 90 s: {status.stdout}{status.stderr}"
        time.sleep(1)


def test_prepare_with_address_spreads_the_tasks_over_two_nodes_and_equals_the_local_prepare(
        moto_server, s3_bucket, tmp_path, ray_cluster):
    image_dir, ann_file = _tiny_coco(tmp_path / "raw", 16)
    upload(image_dir, f"{s3_bucket}/images")
    upload(ann_file.parent, s3_bucket, [ann_file.name])
    common = ["--classes", "person,bicycle,car", "--shard-size", "2"]
    run_cli("prepare", "coco", "--images", image_dir, "--annotations", ann_file, *common, "--out", tmp_path / "local")

    port = free_port()
    address = f"127.0.0.1:{port}"
    # no drain on shutdown: otherwise stopping the head waits ~30 s on a control process that is stopping too
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               RAY_USAGE_STATS_ENABLED="0")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths <= 107 bytes
    nodes = [_start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}", *NODE], env)]
    try:
        _wait_for_nodes(address, 1, env, nodes)
        nodes.append(_start([f"--address={address}", *NODE], env))
        _wait_for_nodes(address, 2, env, nodes)
        out = f"{s3_bucket}/shards"
        result = subprocess.run(
            [sys.executable, "-m", "segdist", "prepare", "coco", "--images", f"{s3_bucket}/images", "--annotations",
             f"{s3_bucket}/{ann_file.name}", *common, "--out", out, "--address", address],
            env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    finally:
        for node in reversed(nodes):
            if node.poll() is None:
                os.killpg(node.pid, 15)
        for node in nodes:
            node.wait(timeout=60)
    line = next(line for line in result.stdout.splitlines() if "converted in" in line)
    assert "in 8 tasks on 2 node(s)" in line, line
    assert all(int(n) > 0 for n in re.findall(r"=(\d+)", line))
    assert_same_dataset(tmp_path / "local", out, "train")
