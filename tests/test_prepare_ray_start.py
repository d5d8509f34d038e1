"""A cold `segdist prepare` starts Ray while it reads its inputs; an input error is reported at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil
import pytest
from helpers import REPO, run_cli, square, write_coco

from segdist.prepare.run import may_convert

pytestmark = pytest.mark.slow


def _ray_processes(since: float) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["create_time"] >= since and ("raylet" in cmdline or "gcs_server" in cmdline):
            found.append(cmdline[:120])
    return found


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segdist", "prepare", "coco", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _inputs(tmp_path):  # noqa: ANN001, ANN202
    """A small COCO tree, and a copy of its annotations with a bad value (annotations[5])."""
    images = [{"id": i, "width": 48, "height": 40} for i in range(1, 9)]
    anns = [{"image_id": i, "category_id": 1, "segmentation": square(4, 4, 30, 30)} for i in range(1, 9)]
    image_dir, ann_file = write_coco(tmp_path, images, anns)
    bad = tmp_path / "bad.json"
    doc = json.loads(ann_file.read_text())
    doc["annotations"][5]["category_id"] = "one"
    bad.write_text(json.dumps(doc))
    return image_dir, ann_file, bad


BAD_VALUE = "annotations[5] key 'category_id' must be an integer"


def test_a_cold_run_succeeds_and_an_input_error_leaves_no_ray_behind(tmp_path):
    image_dir, ann_file, bad = _inputs(tmp_path)
    result = _prepare("--images", image_dir, "--annotations", ann_file, "--classes", "person",
                      "--out", tmp_path / "out")  # cold, local Ray started in the background
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out/dataset.json").read_text())["splits"]["train"]["samples"] == 8

    since = time.time()
    result = _prepare("--images", image_dir, "--annotations", bad, "--classes", "person", "--out", tmp_path / "bad_out")
    assert result.returncode == 2 and BAD_VALUE in result.stderr
    deadline = time.monotonic() + 30  # Ray's node processes die with the process that started them
    while _ray_processes(since) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(since)  # the half-started cluster went with the process
    assert not (tmp_path / "bad_out").exists()


def test_the_inputs_are_read_while_ray_starts_and_an_input_error_does_not_wait_for_it(tmp_path, monkeypatch,
                                                                                       capsys):
    """Ray's start is held until the test lets it finish: the error must come while it is still held."""
    import ray

    from segdist.prepare import ray_cluster

    starting, let_finish, finished, shut_down = (threading.Event() for _ in range(4))

    def held_start(workers, address) -> None:  # noqa: ANN001 - init_ray's signature
        starting.set()
        let_finish.wait(timeout=60)  # only a prepare that waits for Ray gets here on its own, a minute late
        finished.set()

    monkeypatch.setattr(ray_cluster, "init_ray", held_start)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process (the session may hold one)
    monkeypatch.setattr(ray, "shutdown", shut_down.set)
    image_dir, _, bad = _inputs(tmp_path)
    try:
        with pytest.raises(SystemExit) as raised:
            run_cli("prepare", "coco", "--images", image_dir, "--annotations", bad, "--classes", "person",
                    "--out", tmp_path / "bad_out")
        assert raised.value.code == 2 and BAD_VALUE in capsys.readouterr().err
        assert starting.wait(timeout=30), "no Ray start was begun for the run"
        assert not finished.is_set(), "the input error waited for Ray's start-up"
        assert not shut_down.is_set()  # nothing to shut down yet: the start is not over
    finally:
        let_finish.set()
    assert shut_down.wait(timeout=30), "the cluster was not shut down once its start was over"
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
