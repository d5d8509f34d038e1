"""Shard layout: byte-identical whatever the worker count, readable by plain webdataset, Ray --address."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import closing

import pytest
from helpers import free_port, manifest, read_shards, run_cli
from PIL import Image

from segdist.synth.coco import write_synthetic_coco


@pytest.fixture(scope="module")
def synthetic_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "coco"
    write_synthetic_coco(root, images=40, val_images=12, seed=3, width=160, height=120)
    return root


def _prepare(root, out, *extra):
    run_cli("prepare", "coco", "--images", root / "train", "--annotations", root / "annotations/instances_train.json",
            "--classes", "person,bicycle,car,dog", "--out", out, "--shard-size", "7", *extra)


def test_one_and_two_workers_give_identical_shards(synthetic_coco, tmp_path, ray_cluster):
    _prepare(synthetic_coco, tmp_path / "w1", "--workers", "1")
    _prepare(synthetic_coco, tmp_path / "w2", "--workers", "2")
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert len([f for f in files if f.endswith(".tar")]) >= 3
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_plain_webdataset_reads_what_the_manifest_says(synthetic_coco, tmp_path, ray_cluster):
    out = tmp_path / "ds"
    _prepare(synthetic_coco, out, "--splits", "train=0.75,val=0.25")
    m = manifest(out)
    for split, rec in m["splits"].items():
        samples = read_shards(out, split)
        assert len(samples) == rec["samples"] > 0
        per_shard = {}
        for s in samples:
            per_shard[os.path.basename(s["url"])] = per_shard.get(os.path.basename(s["url"]), 0) + 1
            assert s["label"].shape == s["image"].shape[:2] and s["label"].dtype.name == "uint8"
            assert set(s["meta"]) >= {"id", "height", "width", "classes", "boxes", "source"}
        assert per_shard == {sh["name"]: sh["samples"] for sh in rec["shards"]}
        assert len({s["key"] for s in samples}) == len(samples)
        assert rec["skipped"] == {}


def test_shard_byte_limit(synthetic_coco, tmp_path, ray_cluster):
    out = tmp_path / "ds"
    _prepare(synthetic_coco, out, "--shard-bytes", "40KB")
    shards = manifest(out)["splits"]["train"]["shards"]
    assert len(shards) > 3
    for shard in shards:
        assert shard["samples"] == 1 or shard["bytes"] <= 40 * 1024 + 10240  # + tar's end-of-archive padding



@pytest.mark.slow
def test_prepare_against_an_existing_ray_cluster(synthetic_coco, tmp_path):
    port = free_port()
    # no drain on shutdown: otherwise stopping the head waits ~30 s on a control process that is stopping too
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--memory=2000000000",
         "--object-store-memory=200000000", "--include-dashboard=false",
         f"--temp-dir={tempfile.mkdtemp(prefix='ray', dir='/tmp')}"],  # short: socket paths <= 107 bytes
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 60
        while subprocess.run([ray_bin, "status", f"--address={address}"], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None, head.stdout.read().decode()
            assert time.time() < deadline, "ray head did not come up in 60 s"
            time.sleep(1)
        out = tmp_path / "ds"
        result = subprocess.run(
            [sys.executable, "-m", "segdist.cli", "prepare", "coco", "--images", synthetic_coco / "train",
             "--annotations", synthetic_coco / "annotations/instances_train.json", "--classes", "person,car",
             "--out", out, "--address", address],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "Connecting to existing Ray cluster" in result.stderr
        assert manifest(out)["splits"]["train"]["samples"] == len(read_shards(out, "train")) > 0
    finally:
        if head.poll() is None:
            os.killpg(head.pid, 15)
            head.wait(timeout=60)


def test_shard_bytes_splits_a_shard_into_parts_named_in_order(synthetic_coco, tmp_path, ray_cluster):
    for workers in ("1", "2"):
        _prepare(synthetic_coco, tmp_path / workers, "--shard-bytes", "40KB", "--workers", workers)
    rec = manifest(tmp_path / "1")["splits"]["train"]
    names = [s["name"] for s in rec["shards"]]
    assert names == sorted(names) and any("_" in n for n in names) and names[0] == "train-000000.tar"
    assert all(re.fullmatch(r"train-\d{6}(_\d+)?\.tar", n) for n in names)
    # shard k holds inputs k*7 .. k*7+6: every shard index appears, whatever the parts
    shard_count = -(-len(read_shards(tmp_path / "1", "train")) // 7)
    assert sorted({n[6:12] for n in names}) == [f"{k:06d}" for k in range(shard_count)]
    for name in names:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


def test_offsets_point_at_each_samples_first_header(tmp_path, prepare):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    stems = ["a", "b" * 120, "c"]  # a key over 100 characters needs a pax header before its first member
    for stem in stems:
        Image.new("RGB", (8, 4), (1, 2, 3)).save(tmp_path / "img" / f"{stem}.png")
        Image.new("L", (8, 4)).save(tmp_path / "mask" / f"{stem}.png")
    out = tmp_path / "out"
    prepare("folder", "--images", tmp_path / "img", "--masks", tmp_path / "mask", "--classes", "x", "--out", out)
    (shard,) = manifest(out)["splits"]["train"]["shards"]
    data = (out / shard["name"]).read_bytes()
    assert len(shard["offsets"]) == shard["samples"] == 3 and shard["offsets"][0] == 0
    firsts = []
    for offset in shard["offsets"]:
        with tarfile.open(fileobj=io.BytesIO(data[offset:])) as tar:
            first = tar.next()
        firsts.append(first.name)
        assert (first.mtime, first.uid, first.gid, first.uname, first.gname, first.mode) == (0, 0, 0, "", "", 0o444)
    assert sorted(firsts) == sorted(f"{stem}.json" for stem in stems)  # every sample's first member, in shard order


def test_tasks_in_flight_stay_under_twice_the_workers_and_return_only_small_records(
        synthetic_coco, tmp_path, ray_cluster, monkeypatch):
    import ray

    from segdist.prepare import driver

    waits, records, real_wait, real_run = [], [], ray.wait, driver.run_tasks

    def wait(refs, *args, **kwargs):
        waits.append(len(refs))
        return real_wait(refs, *args, **kwargs)

    def run(*args, **kwargs):
        with closing(real_run(*args, **kwargs)) as results:
            for task, record in results:
                records.append(record)
                yield task, record

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(driver, "run_tasks", run)
    _prepare(synthetic_coco, tmp_path / "ds", "--shard-size", "2", "--workers", "1")
    assert len(records) > 10 and max(waits) == 2
    shard_bytes = [part["bytes"] for r in records for part in r["parts"]]
    assert max(len(json.dumps(r)) for r in records) < min(shard_bytes) / 4  # statistics, never image bytes


def test_shard_files_are_byte_identical_to_pythons_tarfile_with_fixed_headers(tmp_path):
    from segdist.format.tar_writer import TarShard

    samples = [("a", {"json": b"{}", "jpg": b"x" * 700}), ("b" * 120, {"seg.png": b"", "png": b"y" * 512}),
               ("c", {"json": b"1" * 10241})]
    shard = TarShard(tmp_path, "train-000000")
    for key, files in samples:
        shard.write(key, files)
    (part,) = shard.close()
    reference, offsets = io.BytesIO(), []
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, files in samples:
            offsets.append(tar.offset)
            for ext in sorted(files):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = (
                    len(files[ext]), 0o444, 0, 0, 0, "", "")
                tar.addfile(info, io.BytesIO(files[ext]))
    assert (tmp_path / "train-000000.tar").read_bytes() == reference.getvalue()
    assert part.offsets == offsets and part.bytes == len(reference.getvalue()) and part.samples == 3
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_shards_mix_the_whole_split_in_a_seeded_order():
    # sources list inputs sequence by sequence: in that order each shard would hold a few sequences
    from types import SimpleNamespace

    from segdist.prepare.fingerprint import shard_order

    job = SimpleNamespace(splits={"train": list(range(200)), "val": list(range(200))})
    order = shard_order(job, "train")
    assert sorted(order) == list(range(200)) and order == shard_order(job, "train") != shard_order(job, "val")
    first_shard = order[:100]
    assert 35 <= sum(i < 100 for i in first_shard) <= 65  # both halves of the split, about evenly
