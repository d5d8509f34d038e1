"""`segdist prepare` from an object store into an object store: tasks read their inputs and upload their shards.

Inputs are real data (COCO, CamVid from ../shared/data) put into moto's S3 server; every run is
compared with the local prepare of the same files, shard bytes included. The Ray cluster is the
session's, restarted once when its workers started before the moto environment was set (they
read and write S3 themselves).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import manifest, run_cli, shared_data, write_coco
from PIL import Image

from segdist import storage

CAMVID_CLASSES = "sky,building,pole,road,pavement,tree,sign,fence,car,pedestrian,bicyclist"
PER_RUN = {"source", "fingerprint", "skipped_examples"}  # a split record's entries that name paths or URLs


def upload(root: Path, url: str, names: list[str] | None = None) -> None:
    """Put the files under `root` (all, or `names`: relative paths) at `url`/<relative path>."""
    names = names or [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: storage.publish_file(root / name, f"{url}/{name}"), names))


def assert_same_dataset(local: Path, url: str, split: str) -> dict:
    """The store holds exactly the dataset of the local prepare: records, shard bytes, nothing else."""
    want, got = manifest(local), storage.read_json(f"{url}/dataset.json")
    assert {k: v for k, v in got["splits"][split].items() if k not in PER_RUN} == \
        {k: v for k, v in want["splits"][split].items() if k not in PER_RUN}
    assert {k: v for k, v in got.items() if k != "splits"} == {k: v for k, v in want.items() if k != "splits"}
    names = [part["name"] for part in got["splits"][split]["shards"]]
    for name in names:
        assert storage.read_bytes(f"{url}/{name}") == (local / name).read_bytes(), name
    assert sorted(obj.name for obj in storage.list_objects(url, recursive=True)) == sorted(["dataset.json", *names])
    return got


@pytest.fixture
def store_prepare(moto_server, ray_cluster):
    """`segdist prepare ...` in-process, on a Ray cluster whose workers reach the moto server."""
    import ray

    from segdist.prepare.ray_cluster import init_ray

    if ray.get(ray.remote(os.getenv).remote("AWS_ENDPOINT_URL")) != os.environ["AWS_ENDPOINT_URL"]:
        ray.shutdown()  # its workers inherited an environment without the moto server
        init_ray(2, None)
    return lambda *argv: run_cli("prepare", *argv)


@pytest.fixture
def driver_reads(monkeypatch):
    """The URLs the driver process opens through segdist.storage."""
    from segdist.storage import objects

    real, seen = objects.open_uncached, []

    def spy(url, *args, **kwargs):
        seen.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(objects, "open_uncached", spy)
    return seen


@pytest.fixture
def submitted(monkeypatch):
    """The (split, index) of every shard task the driver submits."""
    from segdist.prepare import driver

    real, seen = driver.run_tasks, []

    def spy(tasks, *args, **kwargs):
        def recorded():
            for task in tasks:
                seen.append((task.split, task.index))
                yield task
        return real(recorded(), *args, **kwargs)

    monkeypatch.setattr(driver, "run_tasks", spy)
    return seen


def test_coco_from_s3_gives_the_shards_of_a_local_prepare_and_the_driver_reads_no_image(
        store_prepare, s3_bucket, tmp_path, monkeypatch, capsys, driver_reads):
    coco = shared_data("coco-mini")
    upload(coco, f"{s3_bucket}/coco", ["annotations/instances_val2017.json"]
           + [f"val2017/{p.name}" for p in sorted((coco / "val2017").glob("*.jpg"))])
    monkeypatch.setenv("SEGDIST_WORK_DIR", str(tmp_path / "work"))
    common = ["--classes", "person,car", "--split", "val", "--shard-size", "10"]
    run_cli("prepare", "coco", "--images", coco / "val2017", "--annotations",
            coco / "annotations/instances_val2017.json", *common, "--out", tmp_path / "local")
    driver_reads.clear()
    out = f"{s3_bucket}/shards/coco2"
    store_prepare("coco", "--images", f"{s3_bucket}/coco/val2017", "--annotations",
                  f"{s3_bucket}/coco/annotations/instances_val2017.json", *common, "--out", out)
    read_by_prepare = list(driver_reads)  # before this test reads the shards back itself
    got = assert_same_dataset(tmp_path / "local", out, "val")
    assert got["splits"]["val"]["samples"] > 30 and len(got["splits"]["val"]["shards"]) > 3
    assert got["splits"]["val"]["source"]["images"] == f"{s3_bucket}/coco/val2017"
    assert not (tmp_path / "work").exists()  # no work directory: the tasks uploaded their shards
    # the driver read the annotation file and small JSON (dataset.json, records): never an image or a shard
    assert read_by_prepare and all(url.endswith(".json") for url in read_by_prepare), read_by_prepare
    assert "converted in" in capsys.readouterr().out


def test_a_folder_source_from_s3_prefixes_gives_the_shards_of_a_local_prepare(store_prepare, s3_bucket, tmp_path):
    camvid = shared_data("camvid")
    stems = [p.stem for p in sorted((camvid / "val").glob("*.jpg"))[:24]]
    upload(camvid, f"{s3_bucket}/camvid", [f"{d}/{s}.{e}" for s in stems for d, e in (("val", "jpg"),
                                                                                     ("valannot", "png"))])
    (tmp_path / "list.txt").write_text("\n".join(stems))
    common = ["--classes", CAMVID_CLASSES, "--source-ignore", "11", "--split", "val", "--shard-size", "5"]
    run_cli("prepare", "folder", "--images", camvid / "val", "--masks", camvid / "valannot", "--list",
            tmp_path / "list.txt", *common, "--out", tmp_path / "local")
    out = f"{s3_bucket}/shards/camvid"
    store_prepare("folder", "--images", f"{s3_bucket}/camvid/val", "--masks", f"{s3_bucket}/camvid/valannot/",
                  *common, "--out", out)  # no --list: the listing holds just these
    got = assert_same_dataset(tmp_path / "local", out, "val")
    assert got["splits"]["val"]["samples"] == len(stems)
    assert got["splits"]["val"]["source"]["listing"].startswith("sha256:")


def _tiny_coco(root: Path, count: int) -> tuple[Path, Path]:
    images = [{"id": i, "width": 24, "height": 16} for i in range(1, count + 1)]
    annotations = [{"image_id": i, "category_id": 1 + i % 3, "segmentation": [[2, 2, 20, 2, 20, 12, 2, 12]]}
                   for i in range(1, count + 1)]
    return write_coco(root, images, annotations)


def test_missing_and_corrupt_remote_images_are_skipped_and_counted_with_their_url(store_prepare, s3_bucket, tmp_path):
    image_dir, ann_file = _tiny_coco(tmp_path / "raw", 8)
    (image_dir / "000003.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    names = sorted(p.name for p in image_dir.iterdir() if p.name != "000005.jpg")  # 5 is not in the store
    upload(image_dir, f"{s3_bucket}/images", names)
    upload(ann_file.parent, s3_bucket, [ann_file.name])
    out = f"{s3_bucket}/out"
    store_prepare("coco", "--images", f"{s3_bucket}/images", "--annotations", f"{s3_bucket}/{ann_file.name}",
                  "--classes", "person,bicycle,car", "--shard-size", "3", "--out", out)
    rec = storage.read_json(f"{out}/dataset.json")["splits"]["train"]
    assert rec["samples"] == 6 and rec["skipped"] == {"corrupt_image": 1, "missing_image": 1}
    details = " ".join(str(example) for example in rec["skipped_examples"])
    assert f"{s3_bucket}/images/000005.jpg does not exist" in details
    assert f"{s3_bucket}/images/000003.jpg" in details


def test_coco_images_over_http_with_faults_and_an_s3_out(store_prepare, s3_bucket, http_server, tmp_path):
    image_dir, ann_file = _tiny_coco(http_server.root, 9)
    http_server.fail("/images/000004.jpg", times=2, status=503)  # retried by the task that reads it
    common = ["--classes", "person,bicycle,car", "--shard-size", "4"]
    run_cli("prepare", "coco", "--images", image_dir, "--annotations", ann_file, *common, "--out", tmp_path / "local")
    out = f"{s3_bucket}/from-http"
    store_prepare("coco", "--images", f"{http_server.url}/images", "--annotations",
                  f"{http_server.url}/{ann_file.name}", *common, "--out", out)
    assert_same_dataset(tmp_path / "local", out, "train")
    assert len(http_server.requests("/images/000004.jpg", "GET")) == 3


def test_an_interrupted_run_resumes_converting_only_the_missing_shards(store_prepare, s3_bucket, tmp_path,
                                                                      monkeypatch, submitted):
    image_dir, ann_file = _tiny_coco(tmp_path / "raw", 20)
    upload(image_dir, f"{s3_bucket}/images")
    upload(ann_file.parent, s3_bucket, [ann_file.name])
    argv = ["coco", "--images", f"{s3_bucket}/images", "--annotations", f"{s3_bucket}/{ann_file.name}",
            "--classes", "person,bicycle,car", "--shard-size", "2", "--workers", "2"]
    out = f"{s3_bucket}/out"
    monkeypatch.setenv("SEGDIST_FAULT", "prepare_stop@3")  # the driver stops once 3 shards are in
    with pytest.raises(RuntimeError, match="injected fault"):
        store_prepare(*argv, "--out", out)
    monkeypatch.delenv("SEGDIST_FAULT")
    listed = [obj.name for obj in storage.list_objects(out, recursive=True)]
    assert "dataset.json" not in listed and not any(name.endswith(".tar") and "/" not in name for name in listed)
    done = {int(name[-11:-5]) for name in listed if name.endswith(".json")}  # .train.<fp>.partial/train-%06d.json
    assert 3 <= len(done) < 10
    submitted.clear()
    store_prepare(*argv, "--out", out)
    assert sorted(index for _, index in submitted) == sorted(set(range(10)) - done)
    run_cli("prepare", *argv[:1], "--images", image_dir, "--annotations", ann_file, *argv[5:], "--out",
            tmp_path / "local")
    assert_same_dataset(tmp_path / "local", out, "train")


def test_a_second_run_needs_overwrite_which_replaces_the_split_and_deletes_the_shards_it_no_longer_lists(
        store_prepare, s3_bucket, tmp_path, capsys):
    image_dir, ann_file = _tiny_coco(tmp_path / "raw", 6)
    upload(image_dir, f"{s3_bucket}/images")
    upload(ann_file.parent, s3_bucket, [ann_file.name])
    argv = ["coco", "--images", f"{s3_bucket}/images", "--annotations", f"{s3_bucket}/{ann_file.name}",
            "--classes", "person,bicycle,car", "--out", f"{s3_bucket}/out"]
    store_prepare(*argv, "--shard-size", "2")
    with pytest.raises(SystemExit):
        store_prepare(*argv, "--shard-size", "2")
    assert "already holds split 'train'" in capsys.readouterr().err
    store_prepare(*argv, "--shard-size", "4", "--overwrite")
    run_cli("prepare", "coco", "--images", image_dir, "--annotations", ann_file, *argv[5:7], "--shard-size", "4",
            "--out", tmp_path / "local")
    assert_same_dataset(tmp_path / "local", f"{s3_bucket}/out", "train")  # train-000002.tar is gone


def test_an_error_in_a_task_removes_what_the_run_uploaded(store_prepare, s3_bucket, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 6), (i, i, i)).save(tmp_path / "img" / f"f{i}.png")
        Image.fromarray(np.full((6, 8), 9 if i == 4 else 1, np.uint8)).save(tmp_path / "mask" / f"f{i}.png")
    upload(tmp_path, s3_bucket)
    with pytest.raises(SystemExit):
        store_prepare("folder", "--images", f"{s3_bucket}/img", "--masks", f"{s3_bucket}/mask", "--classes", "a,b",
                      "--shard-size", "1", "--out", f"{s3_bucket}/out")
    assert "f4.png" in capsys.readouterr().err
    assert storage.list_objects(f"{s3_bucket}/out", recursive=True) == []


def test_the_fingerprint_of_remote_inputs_covers_each_listed_object(moto_server, s3_bucket, tmp_path):
    from segdist.prepare.fingerprint import fingerprint
    from segdist.prepare.sources import source

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 6), (i, i, i)).save(tmp_path / "img" / f"f{i}.png")
        Image.new("L", (8, 6), 1).save(tmp_path / "mask" / f"f{i}.png")
    upload(tmp_path, s3_bucket)
    options = {"images": f"{s3_bucket}/img", "masks": f"{s3_bucket}/mask", "classes": "a,b"}
    before = fingerprint(source("folder").job(**options), "train")
    assert fingerprint(source("folder").job(**options), "train") == before
    Image.new("L", (8, 6), 0).save(tmp_path / "mask" / "f1.png")
    upload(tmp_path, s3_bucket, ["mask/f1.png"])  # same name, other bytes
    assert fingerprint(source("folder").job(**options), "train") != before


def test_a_remote_prefix_that_cannot_be_listed_is_named(moto_server, s3_bucket):
    from segdist.errors import DataError
    from segdist.prepare.sources import source

    with pytest.raises(DataError, match="no object under this prefix"):
        source("folder").job(images=f"{s3_bucket}/nothing", masks=f"{s3_bucket}/masks", classes="a")
    with pytest.raises(DataError, match="cannot be listed"):
        source("folder").job(images="https://example.invalid/img", masks=f"{s3_bucket}/m", classes="a")
    with pytest.raises(DataError, match="annotation file does not exist"):
        source("coco").job(images=f"{s3_bucket}/img", annotations=f"{s3_bucket}/none.json", classes="person")


def test_a_listing_keeps_the_order_of_a_local_folder(moto_server, s3_bucket, tmp_path):
    from segdist.prepare.locations import Listings

    for name in ("a/b.png", "a-x.png", "a/c/d.png", "b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    upload(tmp_path, f"{s3_bucket}/tree")
    local, remote = Listings().files(tmp_path, recursive=True), Listings().files(f"{s3_bucket}/tree", recursive=True)
    assert list(local) == list(remote) == ["a/b.png", "a/c/d.png", "a-x.png", "b.png"]
    assert remote["a/c/d.png"] == f"{s3_bucket}/tree/a/c/d.png"
    assert json.loads(json.dumps(Listings().record())) == {}


def test_storage_lists_with_sizes_publishes_bytes_copies_and_tells_a_missing_object_apart(moto_server, s3_bucket,
                                                                                          tmp_path, http_server):
    storage.publish_bytes(b"abc", f"{s3_bucket}/p/a.json")
    storage.publish_bytes(b"defg", f"{s3_bucket}/p/d/b.tar")
    storage.copy_object(f"{s3_bucket}/p/d/b.tar", f"{s3_bucket}/p/c.tar")
    assert [(o.name, o.size) for o in storage.list_objects(f"{s3_bucket}/p")] == [("a.json", 3), ("c.tar", 4)]
    found = storage.list_objects(f"{s3_bucket}/p/", recursive=True)
    assert [(o.name, o.size) for o in found] == [("a.json", 3), ("c.tar", 4), ("d/b.tar", 4)]
    assert all(o.etag for o in found) and found[1].etag == found[2].etag
    assert storage.list_objects(f"{s3_bucket}/nothing", recursive=True) == []
    storage.publish_bytes(b"xy", tmp_path / "local" / "x.bin")
    local = storage.list_objects(tmp_path, recursive=True)
    assert [(o.name, o.size, o.etag) for o in local] == [("local/x.bin", 2, None)]
    for missing in (f"{s3_bucket}/p/none", f"{http_server.url}/none", tmp_path / "none"):
        with pytest.raises(storage.ObjectMissing):
            storage.read_bytes(missing)
    http_server.fail("/flaky", times=100, status=503)
    with pytest.raises(storage.ShardUnavailable) as raised:
        storage.read_bytes(f"{http_server.url}/flaky", retry=storage.RetryPolicy(retries=1, backoff=0.01))
    assert not isinstance(raised.value, storage.ObjectMissing)
