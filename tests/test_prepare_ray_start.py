"""A cold `segdist prepare` starts Ray while it reads its inputs; an input error is reported at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest
from helpers import REPO, square, write_coco

from segdist.prepare.run import may_convert

pytestmark = pytest.mark.slow


def _ray_processes(since: float) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["create_time"] >= since and ("raylet" in cmdline or "gcs_server" in cmdline):
            found.append(cmdline[:120])
    return found


def _prepare(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "segdist", "prepare", "coco", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    return result, time.perf_counter() - started


def test_a_cold_run_reads_its_inputs_while_ray_starts_and_an_input_error_does_not_wait_for_it(tmp_path):
    images = [{"id": i, "width": 48, "height": 40} for i in range(1, 9)]
    anns = [{"image_id": i, "category_id": 1, "segmentation": square(4, 4, 30, 30)} for i in range(1, 9)]
    image_dir, ann_file = write_coco(tmp_path, images, anns)
    args = ["--images", image_dir, "--annotations", ann_file, "--classes", "person", "--out", tmp_path / "out"]

    result, _ = _prepare(*args)  # cold, local Ray started in the background
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out/dataset.json").read_text())["splits"]["train"]["samples"] == 8

    bad = tmp_path / "bad.json"
    doc = json.loads(ann_file.read_text())
    doc["annotations"][5]["category_id"] = "one"
    bad.write_text(json.dumps(doc))
    since = time.time()
    result, seconds = _prepare("--images", image_dir, "--annotations", bad, "--classes", "person",
                               "--out", tmp_path / "bad_out")
    assert result.returncode == 2 and "annotations[5] key 'category_id' must be an integer" in result.stderr
    assert seconds < 4.0, seconds  # Ray's start-up alone takes about 5 s here: the error did not wait for it
    time.sleep(2)
    assert not _ray_processes(since)  # the half-started cluster went with the process
    assert not (tmp_path / "bad_out").exists()


def test_no_ray_is_started_early_where_every_shard_is_converted_already(tmp_path):
    assert may_convert(tmp_path / "new")
    staging = tmp_path / "out" / ".train.0123456789abcdef.partial"
    staging.mkdir(parents=True)
    (staging / "state.json").write_text(json.dumps({"tasks": 2}))
    (staging / "train-000000.json").write_text("{}")
    assert may_convert(tmp_path / "out")  # one shard of two is done
    (staging / "train-000001.json").write_text("{}")
    assert not may_convert(tmp_path / "out")
