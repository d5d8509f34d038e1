"""`segdist predict --ray`: a Ray Data pipeline writing the plain predict's files, resuming and skipping alike."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, shared_data

from segdist.evaluation.predict import predict
from segdist.evaluation.predict.ray_pipeline import predict_on_ray, replica_pool

OUTPUTS = "index,color,overlay,probs"


@pytest.fixture
def frames(tmp_path):
    """A folder of 6 real CamVid val frames (copied) and one corrupt file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for frame in sorted((shared_data("camvid") / "val").glob("*.jpg"))[:6]:
        shutil.copy(frame, folder)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def files_of(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_thread_predict(*args, **kwargs) -> dict:
    """The plain predict on one core, as a replica with --cpus-per-replica 1 computes: oneDNN's channels-last
    convolutions round differently with another thread count (torch.set_num_threads(1) alone, in a process that
    started with two, gave other roundings here; test_predict_distributed's reference pins the cores too)."""
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, sorted(cpus)[:1])
    torch.set_num_threads(1)
    try:
        return predict(*args, **kwargs)
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_ray_writes_the_files_of_the_plain_predict_and_a_rerun_writes_nothing(tiny_run, ray_cluster, frames,
                                                                             tmp_path, capsys):
    plain = one_thread_predict(tiny_run, frames, tmp_path / "plain", outputs=OUTPUTS, workers=0)
    done = predict_on_ray(tiny_run, str(frames), tmp_path / "ray", outputs=OUTPUTS, batch_size=2)
    printed = capsys.readouterr().out
    assert done["totals"] == {"inputs": 7, "written": 6, "already_done": 0, "unnamed": 0, "unreadable": 1,
                              "processes": 1}
    assert sorted(done["written"]) == sorted(plain["written"])
    assert done["skipped"] == [(str(frames / "corrupt.jpg"), "not a decodable image")]
    assert f"skipped 1 unreadable file(s):\n  {frames / 'corrupt.jpg'}: not a decodable image" in printed
    ours, theirs = files_of(tmp_path / "ray"), files_of(tmp_path / "plain")
    assert sorted(ours) == sorted(theirs) and len(ours) == 6 * 4
    for name, data in theirs.items():  # index and color PNGs, overlay JPEGs, probs .npz: byte for byte
        if name.endswith(".npz"):
            with np.load(tmp_path / "ray" / name) as a, np.load(tmp_path / "plain" / name) as b:
                np.testing.assert_array_equal(a["probs"], b["probs"])
        else:
            assert ours[name] == data, name

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*")}
    again = predict_on_ray(tiny_run, str(frames), tmp_path / "ray", outputs=OUTPUTS)
    assert again["totals"]["written"] == 0 and again["totals"]["already_done"] == 6
    assert again["totals"]["unreadable"] == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*")} == stamps  # nothing written

    (frames / "corrupt.jpg").unlink()  # every input done: counted from the file names alone, no Ray job at all
    assert predict_on_ray(tiny_run, str(frames), tmp_path / "ray", outputs=OUTPUTS)["totals"] == {
        "inputs": 6, "written": 0, "already_done": 6, "unnamed": 0, "unreadable": 0, "processes": 0}


@pytest.mark.slow
def test_ray_predicts_a_prepared_split_as_the_plain_predict(tiny_run, ray_cluster, tmp_path):
    shards = tiny_run.parents[1] / "shards"  # val: 5 + 5 + 3 samples, each read by its byte range
    plain = one_thread_predict(tiny_run, None, tmp_path / "plain", shards=str(shards), split="val",
                               outputs="index", workers=0)
    done = predict_on_ray(tiny_run, None, tmp_path / "ray", shards=str(shards), split="val", outputs="index")
    assert done["totals"]["written"] == plain["totals"]["written"] == 13
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "plain")


@pytest.mark.slow
def test_the_command_starts_its_own_ray_and_writes_to_s3(tiny_run, moto_server, s3_bucket, frames, tmp_path):
    import boto3

    keep = sorted(frames.glob("0*.jpg"))[:2]
    listing = tmp_path / "two.txt"
    listing.write_text("".join(f"{f}\n" for f in keep))
    # a process of its own: its local Ray cluster's workers inherit the moto server's AWS_* environment
    done = subprocess.run([sys.executable, "-m", "segdist", "predict", "--ray", "--replicas", "1", "--run",
                           str(tiny_run), "--input", f"@{listing}", "--out", f"{s3_bucket}/preds", "--outputs",
                           "index"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "on 1 Ray replica(s) (1 CPU each)" in done.stdout and "wrote 2 prediction(s)" in done.stdout
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"))
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(f"preds/index/{f.stem}.png" for f in keep)


@pytest.mark.parametrize(("cluster", "replicas", "expected"), [
    ({"CPU": 16.0, "GPU": 4.0}, None, (4, {"num_gpus": 1, "num_cpus": 2})),
    ({"CPU": 16.0, "GPU": 4.0}, 2, (2, {"num_gpus": 1, "num_cpus": 2})),
    ({"CPU": 16.0}, None, (7, {"num_cpus": 2})),  # one CPU left to the decode tasks
    ({"CPU": 2.0}, None, (1, {"num_cpus": 2})),  # at least one
])
def test_a_replica_takes_a_gpu_where_there_are_gpus_else_cpus(monkeypatch, cluster, replicas, expected):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    assert replica_pool(replicas, 2) == expected
