"""Shared fixtures: one Ray cluster for the session, and access to the real data beside the repo."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_shard_cache(tmp_path_factory):
    """Remote shards are cached by default under $XDG_CACHE_HOME: one for the session, not the user's."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by all in-process `segdist prepare` calls (saves ~3 s each)."""
    import ray

    from segdist.prepare.ray_cluster import init_ray

    init_ray(2, None)
    yield
    ray.shutdown()


@pytest.fixture
def prepare(ray_cluster):
    """Run `segdist prepare ...` in-process."""
    from helpers import run_cli

    return lambda *argv: run_cli("prepare", *argv)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_cluster):
    """A real run for the evaluate, predict and export tests (shared: training it is the slow part).

    Synthetic COCO at 80x60 (background, person, bicycle, car), 8 train and 13 val images,
    `segdist prepare` in shards of 5 (val: 5 + 5 + 3, uneven), then `segdist train` of
    configs/demo.yaml for 2 steps. Evaluation resizes images to 64 on the long side
    (data.val_size) and scores at the labels' 80x60.
    """
    import subprocess
    import sys
    from pathlib import Path

    from helpers import run_cli

    from segdist.synth.coco import write_synthetic_coco

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path_factory.mktemp("tiny_run")
    write_synthetic_coco(root / "raw", images=8, val_images=13, seed=3, width=80, height=60)
    for split in ("train", "val"):
        run_cli("prepare", "coco", "--images", root / "raw" / split, "--annotations",
                root / "raw" / "annotations" / f"instances_{split}.json", "--classes", "person,bicycle,car",
                "--split", split, "--out", root / "shards", "--shard-size", "5", "--keep-empty")
    cmd = [sys.executable, "-m", "segdist", "train", "--config", str(repo / "configs/demo.yaml"),
           f"data.shards={root / 'shards'}", f"train.runs_dir={root / 'runs'}", "train.name=tiny",
           "train.max_steps=2", "data.crop_size=[64,64]", "data.base_size=80", "data.val_size=64",
           "data.batch_size=4", "data.val_batch_size=4", "data.workers=0", "data.shuffle_window=8"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return root / "runs" / "tiny"


@pytest.fixture
def http_server(tmp_path):
    """A fault-injecting HTTP server on 127.0.0.1 serving `server.root` (tmp_path/www)."""
    from servers import FaultyServer

    (tmp_path / "www").mkdir()
    with FaultyServer(tmp_path / "www") as server:
        yield server


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on 127.0.0.1, with the AWS_* environment pointing at it for the session."""
    from helpers import free_port
    from servers import MotoServer

    server = MotoServer(free_port()).start()
    env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh, empty bucket on the moto server: its s3:// URL."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server.url).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def s3_proxy(moto_server, monkeypatch):
    """A fault-injecting proxy in front of moto; AWS_ENDPOINT_URL points at it for the test."""
    from servers import FaultyServer

    with FaultyServer(upstream=moto_server.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy
