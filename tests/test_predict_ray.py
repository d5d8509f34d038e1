"""`segdist predict --ray`: a Ray Data pipeline that writes the files the plain predict writes, resumes and skips alike."""

import os
import shutil

import numpy as np
import pytest
import torch
from helpers import run_cli, shared_data

from segdist.evaluation.predict import predict
from segdist.evaluation.predict.ray_pipeline import predict_on_ray

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


@pytest.fixture
def ray_reaching_moto(moto_server, ray_cluster):
    """The session's Ray cluster, restarted if its workers' environment predates the moto server."""
    import ray

    from segdist.prepare.ray_cluster import init_ray

    if ray.get(ray.remote(os.getenv).remote("AWS_ENDPOINT_URL")) != os.environ["AWS_ENDPOINT_URL"]:
        ray.shutdown()
        init_ray(2, None)


@pytest.mark.slow
def test_ray_predicts_into_s3_from_the_command_line(tiny_run, ray_reaching_moto, s3_bucket, frames, capsys):
    import boto3

    os.remove(frames / "corrupt.jpg")
    keep = sorted(frames.iterdir())[:2]
    for extra in sorted(frames.iterdir())[2:]:
        extra.unlink()
    run_cli("predict", "--ray", "--replicas", "1", "--cpus-per-replica", "1", "--run", tiny_run,
            "--input", frames, "--out", f"{s3_bucket}/preds", "--outputs", "index")
    assert "wrote 2 prediction(s)" in capsys.readouterr().out
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket.removeprefix("s3://"))
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(f"preds/index/{f.stem}.png" for f in keep)
