"""`prepare cityscapes` and `prepare folder` on the real data beside the repo, plus colour masks."""

import json

import numpy as np
from helpers import manifest, read_shards, shared_data
from PIL import Image

# The official table (cityscapesScripts labels.py), written out here independently of segdist.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                      25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CAMVID = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


def test_cityscapes_train_ids_follow_the_official_table(tmp_path, prepare):
    root = shared_data("cityscapes-sample")
    out = tmp_path / "cs"
    prepare("cityscapes", "--root", root, "--split", "val", "--out", out)
    (sample,) = read_shards(out, "val")
    frame = "frankfurt_000000_000294"
    label_ids = np.asarray(Image.open(root / "gtFine/val/frankfurt" / f"{frame}_gtFine_labelIds.png"))
    expected = np.full_like(label_ids, 255)
    for label_id, train_id in OFFICIAL_TRAIN_IDS.items():
        expected[label_ids == label_id] = train_id
    assert sample["key"] == frame
    assert np.array_equal(sample["label"], expected)
    assert len(np.unique(label_ids)) > 5 and (expected == 255).any()
    assert sample["image_bytes"] == (root / "leftImg8bit/val/frankfurt" / f"{frame}_leftImg8bit.png").read_bytes()
    m = manifest(out)
    assert m["classes"][0] == "road" and m["classes"][18] == "bicycle" and len(m["classes"]) == 19
    assert m["palette"][0] == [128, 64, 128]


def test_cityscapes_jpeg_transcode(tmp_path, prepare):
    out = tmp_path / "cs"
    prepare("cityscapes", "--root", shared_data("cityscapes-sample"), "--split", "val", "--out", out,
            "--image-format", "jpeg")
    (sample,) = read_shards(out, "val")
    assert sample["image_bytes"][:3] == b"\xff\xd8\xff"


def test_camvid_folder_as_is(tmp_path, prepare):
    root = shared_data("camvid")
    out = tmp_path / "camvid"
    prepare("folder", "--images", root / "val", "--masks", root / "valannot", "--classes", CAMVID,
            "--source-ignore", "11", "--split", "val", "--out", out)
    samples = read_shards(out, "val")
    assert len(samples) == 101 == manifest(out)["splits"]["val"]["samples"]
    for s in samples[:10]:
        source = np.asarray(Image.open(root / "valannot" / f"{s['key']}.png"))
        expected = np.where(source == 11, 255, source)
        assert np.array_equal(s["label"], expected)
        assert s["image_bytes"] == (root / "val" / f"{s['key']}.jpg").read_bytes()


def test_rgba_colour_masks_through_a_palette(tmp_path, prepare, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    Image.new("RGB", (12, 6), (9, 9, 9)).save(tmp_path / "img" / "a.png")
    rgba = np.zeros((6, 12, 4), np.uint8)  # transparent = background
    rgba[0, :3] = (255, 0, 0, 255)
    rgba[1, :3] = (0, 255, 0, 255)
    rgba[2, :3] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask" / "a.png")
    palette = tmp_path / "palette.json"
    palette.write_text(json.dumps({"background": [0, 0, 0], "person": [255, 0, 0], "bicycle": [0, 255, 0],
                                   "car": [0, 0, 255]}))
    out = tmp_path / "out"
    prepare("folder", "--images", tmp_path / "img", "--masks", tmp_path / "mask",
            "--classes", "background,person,bicycle,car", "--palette", palette, "--out", out)
    (sample,) = read_shards(out, "train")
    assert sample["label"][:3, 0].tolist() == [1, 2, 3] and sample["label"][3:].max() == 0
    assert manifest(out)["palette"] == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]

    rgba[4, 4] = (1, 2, 3, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask" / "a.png")
    import pytest

    with pytest.raises(SystemExit):
        prepare("folder", "--images", tmp_path / "img", "--masks", tmp_path / "mask",
                "--classes", "background,person,bicycle,car", "--palette", palette, "--out", tmp_path / "o2")
    assert "a.png: colours ['#010203'] are not in the palette" in capsys.readouterr().err


def test_unpaired_files_are_counted(tmp_path, prepare):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (4, 4)).save(tmp_path / "img" / f"{stem}.jpg")
    for stem in ("a", "c"):
        Image.new("L", (4, 4)).save(tmp_path / "mask" / f"{stem}.png")
    out = tmp_path / "out"
    prepare("folder", "--images", tmp_path / "img", "--masks", tmp_path / "mask", "--classes", "x,y", "--out", out)
    assert manifest(out)["splits"]["train"]["skipped"] == {"missing_image": 1, "missing_mask": 1}
