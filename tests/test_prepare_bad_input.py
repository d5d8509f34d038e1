"""Bad input: clear errors naming the file and the problem, or skipped and counted; never half-written."""

import json
from contextlib import closing

import numpy as np
import pytest
from helpers import manifest, read_shards, square, write_coco
from PIL import Image

from segdist.errors import DataError


def _tree(tmp_path, n=4, size=(40, 30)):
    images = [{"id": i, "width": size[0], "height": size[1]} for i in range(1, n + 1)]
    anns = [{"image_id": i, "category_id": 1, "segmentation": square(5, 5, 20, 20)} for i in range(1, n + 1)]
    return write_coco(tmp_path, images, anns)


def _coco(prepare, images, ann_file, out, *extra):
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person", "--out", out, *extra)


def test_missing_corrupt_and_resized_images_are_skipped_and_counted(tmp_path, prepare):
    images, ann_file = _tree(tmp_path, n=5)
    (images / "000001.jpg").unlink()
    data = (images / "000002.jpg").read_bytes()
    (images / "000002.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (images / "000003.jpg").write_bytes(b"not a jpeg at all")
    Image.new("RGB", (41, 30)).save(images / "000004.jpg")  # differs from the JSON's 40x30
    out = tmp_path / "out"
    _coco(prepare, images, ann_file, out)
    rec = manifest(out)["splits"]["train"]
    assert rec["samples"] == 1
    assert rec["skipped"] == {"corrupt_image": 2, "missing_image": 1, "size_mismatch": 1}
    reasons = {key: reason for key, reason, _ in rec["skipped_examples"]}
    assert reasons == {"000001": "missing_image", "000002": "corrupt_image", "000003": "corrupt_image",
                       "000004": "size_mismatch"}
    assert [s["key"] for s in read_shards(out, "train")] == ["000005"]


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_not_coco_json_names_the_missing_key(tmp_path, prepare, capsys, missing):
    images, ann_file = _tree(tmp_path)
    data = json.loads(ann_file.read_text())
    del data[missing]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exc:
        _coco(prepare, images, ann_file, tmp_path / "out")
    assert exc.value.code == 2
    assert f"segdist: error: {ann_file}: not a COCO instances file: missing key '{missing}'" in capsys.readouterr().err
    with pytest.raises(DataError, match=f"{ann_file}.*missing key '{missing}'"):
        from segdist.prepare.sources.coco.annotation_file import load_annotations

        load_annotations(ann_file)
    assert not (tmp_path / "out").exists()


def test_unknown_class_lists_available_names(tmp_path, prepare, capsys):
    images, ann_file = _tree(tmp_path)
    with pytest.raises(SystemExit) as exc:
        prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person,zebra",
                "--out", tmp_path / "out")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "class 'zebra' is not in the annotations; available: person, bicycle, car" in err


def test_nothing_selected_writes_nothing(tmp_path, prepare, capsys):
    images, ann_file = _tree(tmp_path)
    with pytest.raises(SystemExit):
        prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "car",
                "--out", tmp_path / "out")
    assert "nothing selected" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path, prepare, capsys):
    images, ann_file = _tree(tmp_path)
    out = tmp_path / "out"
    _coco(prepare, images, ann_file, out)
    before = (out / "train-000000.tar").read_bytes()
    with pytest.raises(SystemExit):
        _coco(prepare, images, ann_file, out, "--shard-size", "2")
    assert "already holds split 'train'" in capsys.readouterr().err
    assert (out / "train-000000.tar").read_bytes() == before
    _coco(prepare, images, ann_file, out, "--shard-size", "2", "--overwrite")
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    # another split goes into the same dataset directory without --overwrite
    _coco(prepare, images, ann_file, out, "--split", "val")
    assert set(manifest(out)["splits"]) == {"train", "val"}


def test_folder_values_outside_class_range(tmp_path, prepare, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 8), (i, i, i)).save(tmp_path / "img" / f"f{i}.jpg")
        mask = np.zeros((8, 16), np.uint8)
        mask[0, :4] = 2
        if i == 1:
            mask[1, :3] = 7
            mask[2, :2] = 9
        Image.fromarray(mask).save(tmp_path / "mask" / f"f{i}.png")
    args = ("folder", "--images", tmp_path / "img", "--masks", tmp_path / "mask", "--classes", "a,b,c")
    with pytest.raises(SystemExit):
        prepare(*args, "--out", tmp_path / "bad")
    err = capsys.readouterr().err
    assert "f1.png: mask values [7, 9] are outside the class range 0..2" in err
    assert not (tmp_path / "bad").exists()

    prepare(*args, "--out", tmp_path / "mapped", "--unknown-to-ignore")
    labels = {s["key"]: s["label"] for s in read_shards(tmp_path / "mapped", "train")}
    assert labels["f1"][1, 0] == 255 and labels["f1"][2, 0] == 255 and labels["f1"][0, 0] == 2


def test_interrupted_run_leaves_no_complete_looking_shard_and_resumes(tmp_path, prepare, monkeypatch):
    from segdist.prepare import driver

    images, ann_file = _tree(tmp_path, n=20)
    reference = tmp_path / "reference"
    _coco(prepare, images, ann_file, reference, "--shard-size", "3")  # 7 shards

    real = driver.run_tasks
    converted = []

    def interrupted(*args, **kwargs):
        with closing(real(*args, **kwargs)) as results:  # closed: its tasks are cancelled and waited for
            for i, (task, record) in enumerate(results):
                if i == 3:
                    raise KeyboardInterrupt
                yield task, record

    def counted(*args, **kwargs):
        with closing(real(*args, **kwargs)) as results:
            for task, record in results:
                converted.append(task.index)
                yield task, record

    out = tmp_path / "out"
    monkeypatch.setattr(driver, "run_tasks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _coco(prepare, images, ann_file, out, "--shard-size", "3")
    # Nothing in the output looks like a shard or a dataset: all of it is in the hidden staging directory.
    (staging,) = out.iterdir()
    assert staging.name.startswith(".train.") and staging.name.endswith(".partial")
    names = sorted(p.name for p in staging.iterdir())
    records = [n for n in names if n.endswith(".json") and n != "state.json"]
    assert len(records) >= 3 and "state.json" in names
    # every recorded shard is there; a task that was still running when the interrupt came may
    # have finished its tar without a record: not done, so the resume converts it again (below)
    assert {r.replace(".json", ".tar") for r in records} <= {n for n in names if n.endswith(".tar")}
    assert not [n for n in names if n.endswith(".tmp")]

    # A different run into the interrupted directory is refused ...
    with pytest.raises(SystemExit):
        _coco(prepare, images, ann_file, out, "--shard-size", "4")
    # ... the same one converts only the shards not done, byte-identical to an uninterrupted run.
    monkeypatch.setattr(driver, "run_tasks", counted)
    _coco(prepare, images, ann_file, out, "--shard-size", "3")
    assert len(converted) == 7 - len(records) and not set(converted) & {int(r[6:12]) for r in records}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for tar in reference.glob("*.tar"):
        assert (out / tar.name).read_bytes() == tar.read_bytes()
    assert manifest(out)["splits"] == manifest(reference)["splits"]


@pytest.mark.parametrize("section,index,key,value,wants", [
    ("images", 1, "width", "40", "a positive integer"),
    ("images", 0, "id", 1.5, "an integer"),
    ("annotations", 2, "category_id", None, "an integer"),
    ("annotations", 0, "bbox", [1, 2, 3], "a list of 4 numbers [x, y, w, h]"),
    ("annotations", 3, "iscrowd", 2, "0 or 1"),
    ("categories", 1, "name", 7, "a non-empty string"),
])
def test_coco_values_of_the_wrong_type_name_the_file_entry_and_key(tmp_path, prepare, capsys, section, index, key,
                                                                   value, wants):
    images, ann_file = _tree(tmp_path)
    data = json.loads(ann_file.read_text())
    data[section][index][key] = value
    ann_file.write_text(json.dumps(data))
    with pytest.raises(SystemExit):
        _coco(prepare, images, ann_file, tmp_path / "out")
    assert f"{ann_file}: {section}[{index}] key '{key}' must be {wants}, got {value!r}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_annotation_that_cannot_be_drawn_skips_its_image_by_name(tmp_path, prepare):
    images, ann_file = _tree(tmp_path, n=4)
    data = json.loads(ann_file.read_text())
    data["annotations"][1]["segmentation"] = {"counts": [5, 5], "size": [30, 40]}  # covers 10 of 1200 pixels
    data["annotations"][2]["segmentation"] = [[1, 1, float("nan"), 1, 9, 9]]
    data["annotations"].append({"id": 5, "image_id": 4, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 8, 0],
                                "segmentation": [[1, 1, 9, 1]]})  # 2 points: no area, dropped, its image kept
    ann_file.write_text(json.dumps(data))
    out = tmp_path / "out"
    _coco(prepare, images, ann_file, out)
    rec = manifest(out)["splits"]["train"]
    assert rec["samples"] == 2 and rec["skipped"] == {"bad_annotation": 2}
    assert rec["dropped_annotations"] == {"degenerate_polygon": 1}
    details = {key: detail for key, _, detail in rec["skipped_examples"]}
    assert details["000002"] == (f"{images}/000002.jpg: annotation 2: RLE run lengths are malformed, negative, "
                                 "or do not cover height x width pixels")
    assert details["000003"].endswith("annotation 3: polygon coordinates are not all finite numbers")


def test_compressed_rle_runs_decode_as_pycocotools_encodes_them():
    from pycocotools import mask as mask_utils

    from segdist.prepare.sources.coco.segmentation import rle_runs

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 60, 2)
        mask = np.asfortranarray(rng.random((h, w)) < rng.random())
        flat = mask.ravel(order="F").astype(np.int8)
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        runs = ([0] if flat[0] else []) + runs  # COCO's runs start with zeros
        assert rle_runs(mask_utils.encode(mask.astype(np.uint8))["counts"].decode()) == runs
    assert rle_runs("o") is None and rle_runs("~") is None and rle_runs([1, True]) is None
