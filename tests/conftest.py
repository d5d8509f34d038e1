"""Shared fixtures: one Ray cluster for the session, and access to the real data beside the repo."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by all in-process `segdist prepare` calls (saves ~3 s each)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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

    from segdist.sources.synthetic import write_synthetic_coco

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
           "data.batch_size=4", "data.val_batch_size=4", "data.workers=0", "data.shuffle_buffer=8"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return root / "runs" / "tiny"
