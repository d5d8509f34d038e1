"""What `segdist predict` reads and where it writes: s3:// in and out (moto), a prepared split, a list of
paths and http URLs; and the option mistakes it refuses."""

import os
import shutil

import boto3
import numpy as np
import pytest
from helpers import read_shards, run_cli, shared_data
from PIL import Image

from segdist.evaluation.predict import predict
from segdist.runs.run import load_run
from segdist.utils.images import decode_rgb


@pytest.fixture
def frames():
    return sorted((shared_data("camvid") / "val").glob("*.jpg"))[:3]


def test_s3_in_and_s3_out_give_the_local_files(tiny_run, frames, s3_bucket, tmp_path):
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    for frame in frames:
        s3.upload_file(str(frame), bucket, f"in/{frame.name}")
    s3.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"not an image")
    local = tmp_path / "local"
    local.mkdir()
    for frame in frames:
        os.symlink(frame, local / frame.name)
    predict(tiny_run, str(local), tmp_path / "out", outputs="index,probs", workers=0)
    result = predict(tiny_run, f"{s3_bucket}/in/", f"{s3_bucket}/out", outputs="index,probs", workers=1)
    assert result["totals"]["written"] == 3
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])
    expected = {f"{folder}/{f.stem}{suffix}" for f in frames
                for folder, suffix in (("index", ".png"), ("probs", ".npz"))}
    assert keys == sorted(f"out/{name}" for name in expected)
    for name in expected:  # byte for byte what the local run wrote
        assert s3.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read() == (tmp_path / "out" / name).read_bytes()
    again = predict(tiny_run, f"{s3_bucket}/in/", f"{s3_bucket}/out", outputs="index,probs", workers=0)
    assert (again["totals"]["written"], again["totals"]["already_done"]) == (0, 3)


def test_a_prepared_split_is_predicted_sample_by_sample_named_by_key(tiny_run, tmp_path, capsys):
    shards = tiny_run.parents[1] / "shards"
    run_cli("predict", "--run", tiny_run, "--shards", shards, "--split", "val", "--out", tmp_path / "out",
            "--outputs", "index", "--workers", "1")
    assert "wrote 13 prediction(s)" in capsys.readouterr().out
    samples = read_shards(shards, "val")
    assert sorted(p.name for p in (tmp_path / "out/index").iterdir()) == sorted(f"{s['key']}.png" for s in samples)
    run = load_run(tiny_run)
    for sample in samples[:3]:
        expected = run.predict(decode_rgb(np.frombuffer(sample["image_bytes"], np.uint8)), device="cpu")
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/index" / f"{sample['key']}.png")), expected)
    run_cli("predict", "--run", tiny_run, "--shards", shards, "--split", "val", "--out", tmp_path / "out",
            "--outputs", "index", "--workers", "0")
    assert "already done: 13" in capsys.readouterr().out


def test_a_list_of_paths_and_http_urls(tiny_run, frames, http_server, tmp_path):
    for frame in frames[1:]:
        shutil.copy(frame, http_server.root)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two served, one local, one missing\n{http_server.url}/{frames[1].name}\n"
                       f"{http_server.url}/{frames[2].name}\n\n{frames[0]}\n{tmp_path / 'missing.jpg'}\n")
    result = predict(tiny_run, f"@{listing}", tmp_path / "out", outputs="index", workers=1)
    assert result["totals"]["written"] == 3 and result["skipped"] == [
        (str(tmp_path / "missing.jpg"), "cannot read the file (No such file or directory)")]
    assert sorted(p.name for p in (tmp_path / "out/index").iterdir()) == sorted(f"{f.stem}.png" for f in frames)


def test_option_mistakes_are_refused(tiny_run, frames, tmp_path, capsys):
    cases = {
        ("--input", frames[0], "--outputs", "index,mask"): "choose among index,color,overlay,probs",
        ("--input", frames[0], "--format", "cityscapes", "--outputs", "probs"): "--outputs belongs to --format segdist",
        ("--shards", tiny_run.parents[1] / "shards"): "--shards needs --split",
        ("--input", "http://127.0.0.1:9/prefix/"): "an http(s) prefix cannot be listed",
        ("--input", f"@{tmp_path / 'none.txt'}"): "cannot read the list",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run_cli("predict", "--run", tiny_run, "--out", tmp_path / "x", "--workers", "0", *argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        run_cli("predict", "--run", tiny_run, "--input", frames[0], "--out", "https://host/out")
    assert "write to a local folder or an s3:// prefix" in capsys.readouterr().err
