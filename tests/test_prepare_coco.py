"""`segdist prepare coco`: label maps checked against masks decoded independently with pycocotools."""

import json

import numpy as np
import pytest
from helpers import manifest, read_shards, shared_data, square, write_coco
from pycocotools.coco import COCO

CLASSES = ["person", "bicycle", "car", "motorcycle", "airplane"]


@pytest.fixture(scope="module")
def coco_mini_shards(tmp_path_factory, ray_cluster):
    from helpers import run_cli

    root = shared_data("coco-mini")
    out = tmp_path_factory.mktemp("coco") / "mini"
    for split in ("train", "val"):
        run_cli("prepare", "coco", "--images", root / f"{split}2017",
                "--annotations", root / "annotations" / f"instances_{split}2017.json",
                "--classes", ",".join(CLASSES), "--split", split, "--out", out, "--shard-size", "32")
    return root, out


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_mini_labels_match_pycocotools(coco_mini_shards, split):
    root, out = coco_mini_shards
    coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))
    cat_ids = coco.getCatIds(catNms=CLASSES)
    label_of = {c["id"]: CLASSES.index(c["name"]) + 1 for c in coco.loadCats(cat_ids)}
    expected_ids = {
        a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=cat_ids)) if not a["iscrowd"]
    }
    samples = read_shards(out, split)
    assert {s["meta"]["id"] for s in samples} == expected_ids
    assert len(samples) == manifest(out)["splits"][split]["samples"]

    checked_crowd = 0
    for s in samples:
        img = coco.loadImgs(s["meta"]["id"])[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"], catIds=cat_ids))
        h, w = img["height"], img["width"]
        cover = np.zeros((h, w), np.int32)
        owner = np.zeros((h, w), np.int32)
        crowd = np.zeros((h, w), bool)
        for ann in anns:
            m = coco.annToMask(ann).astype(bool)
            if ann["iscrowd"]:
                crowd |= m
            else:
                cover += m
                owner[m] = label_of[ann["category_id"]]
        label = s["label"]
        assert label.shape == (h, w) and s["image"].shape == (h, w, 3)
        single = (cover == 1) & ~crowd
        assert np.array_equal(label[single], owner[single]), s["key"]
        assert np.all(label[crowd] == 255), s["key"]
        assert np.all(label[(cover == 0) & ~crowd] == 0), s["key"]
        checked_crowd += int(crowd.any())
        assert s["image_bytes"] == (root / f"{split}2017" / img["file_name"]).read_bytes()
    assert checked_crowd > 0, "coco-mini has crowd regions on selected classes; the check must see some"


def test_coco_mini_manifest(coco_mini_shards):
    _, out = coco_mini_shards
    m = manifest(out)
    assert m["classes"] == ["background", *CLASSES]
    assert m["ignore_index"] == 255 and len(m["palette"]) == len(CLASSES) + 1
    for split, rec in m["splits"].items():
        samples = read_shards(out, split)
        assert rec["samples"] == len(samples) == sum(s["samples"] for s in rec["shards"])
        pixels = np.zeros(len(CLASSES) + 1, np.int64)
        images = np.zeros(len(CLASSES) + 1, np.int64)
        for s in samples:
            counts = np.bincount(s["label"].ravel(), minlength=256)
            pixels += counts[: len(CLASSES) + 1]
            images += counts[: len(CLASSES) + 1] > 0
            assert s["meta"]["classes"] == np.flatnonzero(counts[: len(CLASSES) + 1]).tolist()
        assert rec["class_pixels"] == pixels.tolist()
        assert rec["class_images"] == images.tolist()
        all_rgb = np.concatenate([s["image"].reshape(-1, 3) for s in samples]) / 255
        # JPEGs are decoded at half scale for the statistics (see read_image)
        np.testing.assert_allclose(rec["mean"], all_rgb.mean(0), rtol=2e-3)
        np.testing.assert_allclose(rec["std"], all_rgb.std(0), rtol=2e-2)


def _overlap_tree(tmp_path):
    # A big person square, a small car square inside it, a bicycle square overlapping the person's
    # corner, and a crowd person region given as uncompressed RLE.
    crowd = np.zeros((60, 80), np.uint8, order="F")
    crowd[50:58, 60:78] = 1
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(crowd))
    runs = _uncompressed_counts(crowd)
    assert mask_utils.area(rle) == crowd.sum()
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": square(10, 10, 50, 50)},
        {"image_id": 1, "category_id": 3, "segmentation": square(20, 20, 30, 30)},
        {"image_id": 1, "category_id": 2, "segmentation": square(40, 40, 60, 55)},
        {"image_id": 1, "category_id": 1, "segmentation": {"counts": runs, "size": [60, 80]}, "iscrowd": 1},
    ]
    return write_coco(tmp_path, [{"id": 1, "width": 80, "height": 60}], anns)


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


@pytest.mark.parametrize(
    "overlap,classes,car_region,corner_region",
    [
        ("area", "person,bicycle,car", "car", "bicycle"),  # smaller instances painted last stay visible
        ("order", "person,bicycle,car", "car", "bicycle"),  # the later class in --classes wins
        ("order", "car,bicycle,person", "person", "person"),
        ("ignore", "person,bicycle,car", "ignore", "ignore"),  # covered by two instances
        ("ignore-between-classes", "person,bicycle,car", "ignore", "ignore"),  # claimed by two classes
    ],
)
def test_overlap_policies(tmp_path, prepare, overlap, classes, car_region, corner_region):
    images, ann_file = _overlap_tree(tmp_path)
    out = tmp_path / "out"
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", classes,
            "--overlap", overlap, "--out", out)
    label_of = {name: i + 1 for i, name in enumerate(classes.split(","))} | {"ignore": 255}
    (sample,) = read_shards(out, "train")
    label = sample["label"]
    assert np.all(label[22:28, 22:28] == label_of[car_region])
    assert np.all(label[42:48, 42:48] == label_of[corner_region])  # person x bicycle
    assert np.all(label[12:18, 12:18] == label_of["person"])  # person alone
    assert np.all(label[52:54, 52:58] == label_of["bicycle"])  # bicycle alone
    assert np.all(label[51:57, 62:76] == 255)  # crowd -> ignore
    assert label[2, 2] == 0


@pytest.mark.parametrize("overlap,expected", [("ignore", 255), ("ignore-between-classes", 1)])
def test_overlapping_instances_of_one_class(tmp_path, prepare, overlap, expected):
    anns = [{"image_id": 1, "category_id": 1, "segmentation": square(2, 2, 20, 20)},
            {"image_id": 1, "category_id": 1, "segmentation": square(10, 10, 30, 30)}]
    images, ann_file = write_coco(tmp_path, [{"id": 1, "width": 40, "height": 40}], anns)
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person", "--overlap", overlap,
            "--out", tmp_path / "out")
    (sample,) = read_shards(tmp_path / "out", "train")
    assert np.all(sample["label"][12:18, 12:18] == expected)  # covered twice
    assert np.all(sample["label"][3:9, 3:9] == 1) and np.all(sample["label"][22:28, 22:28] == 1)


def _torchvision_target(coco: COCO, image: dict, classes: list[str], crowd_ignore: bool) -> np.ndarray:
    """torchvision references/segmentation coco_utils.py, rewritten with numpy.

    FilterAndRemapCocoCategories keeps the annotations of the chosen categories and maps them to
    their position in the list (0 = background); ConvertCocoPolysToMask decodes every annotation
    (polygons of one instance OR-ed), takes the max of mask x category over instances and sets
    every pixel covered by more than one instance to 255. With `crowd_ignore`, crowd annotations
    are left out of that and their pixels set to 255 afterwards (segdist's --crowd ignore).
    """
    from pycocotools import mask as mask_utils

    label_of = {c["id"]: classes.index(c["name"]) + 1 for c in coco.loadCats(coco.getCatIds(catNms=classes))}
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])) if a["category_id"] in label_of]
    crowd = [a for a in anns if crowd_ignore and a["iscrowd"]]
    anns = [a for a in anns if a not in crowd]
    h, w = image["height"], image["width"]
    target = np.zeros((h, w), np.uint8)
    if anns:
        masks = []
        for ann in anns:
            mask = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w))
            masks.append((mask[..., None] if mask.ndim < 3 else mask).any(axis=2))
        masks = np.stack(masks).astype(np.uint8)
        cats = np.array([label_of[a["category_id"]] for a in anns], np.uint8)
        target = (masks * cats[:, None, None]).max(axis=0)
        target[masks.sum(axis=0) > 1] = 255
    for ann in crowd:
        target[coco.annToMask(ann).astype(bool)] = 255
    return target


@pytest.mark.parametrize("crowd", ["label", "ignore"])
def test_overlap_ignore_matches_torchvisions_reference_on_coco_mini(tmp_path, prepare, crowd):
    root = shared_data("coco-mini")
    ann_file = root / "annotations" / "instances_val2017.json"
    out = tmp_path / "out"
    prepare("coco", "--images", root / "val2017", "--annotations", ann_file, "--classes", ",".join(CLASSES),
            "--overlap", "ignore", "--crowd", crowd, "--split", "val", "--out", out)
    coco = COCO(str(ann_file))
    samples = read_shards(out, "val")
    overlapping = 0
    for s in samples:
        expected = _torchvision_target(coco, coco.loadImgs(s["meta"]["id"])[0], CLASSES, crowd == "ignore")
        assert np.array_equal(s["label"], expected), s["key"]
        overlapping += int((expected == 255).any())
    assert len(samples) > 20 and overlapping > 5, "coco-mini has overlapping instances; the check must see them"


def test_crowd_label_mode(tmp_path, prepare):
    images, ann_file = _overlap_tree(tmp_path)
    out = tmp_path / "out"
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person,bicycle,car",
            "--crowd", "label", "--out", out)
    (sample,) = read_shards(out, "train")
    assert np.all(sample["label"][51:57, 62:76] == 1)
    assert not np.any(sample["label"] == 255)


def test_compressed_rle_polygon_clipping_and_degenerate(tmp_path, prepare):
    from pycocotools import mask as mask_utils

    m = np.zeros((60, 80), np.uint8)
    m[5:15, 60:70] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    anns = [
        {"image_id": 1, "category_id": 3, "segmentation": {"counts": rle["counts"].decode(), "size": [60, 80]}},
        {"image_id": 1, "category_id": 1, "segmentation": square(-30, -30, 20, 20)},  # partly outside
        {"image_id": 1, "category_id": 2, "segmentation": [[30, 30, 40, 40]]},  # 2 points: degenerate
        {"image_id": 1, "category_id": 2, "segmentation": square(70, 50, 200, 200)},  # clipped to the corner
    ]
    images, ann_file = write_coco(tmp_path, [{"id": 1, "width": 80, "height": 60}], anns)
    out = tmp_path / "out"
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person,bicycle,car", "--out", out)
    (sample,) = read_shards(out, "train")
    label = sample["label"]
    assert np.array_equal(label == 3, m.astype(bool))
    assert np.all(label[0:19, 0:19] == 1) and not np.any(label[21:, :] == 1) and not np.any(label[:, 21:] == 1)
    assert np.all(label[51:, 71:] == 2)
    assert not np.any(label[29:41, 29:41] == 2)
    assert manifest(out)["splits"]["train"]["dropped_annotations"] == {"degenerate_polygon": 1}


def _many_images_tree(tmp_path, n=30):
    images = [{"id": i, "width": 32, "height": 32} for i in range(1, n + 1)]
    anns = []
    for i in range(1, n + 1):
        if i % 5 == 0:
            continue  # empty image
        anns.append({"image_id": i, "category_id": 1 + i % 3, "segmentation": square(2, 2, 20, 20)})
    return write_coco(tmp_path, images, anns)


def test_keep_empty_and_per_class(tmp_path, prepare):
    images, ann_file = _many_images_tree(tmp_path)
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person,bicycle,car",
            "--out", tmp_path / "a")
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person,bicycle,car",
            "--keep-empty", "--out", tmp_path / "b")
    assert manifest(tmp_path / "a")["splits"]["train"]["samples"] == 24
    assert manifest(tmp_path / "b")["splits"]["train"]["samples"] == 30

    for name in ("c", "d"):
        prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person,bicycle,car",
                "--per-class", "3", "--seed", "7", "--out", tmp_path / name)
    c = read_shards(tmp_path / "c", "train")
    assert [s["key"] for s in c] == [s["key"] for s in read_shards(tmp_path / "d", "train")]
    per_class = np.bincount([s["meta"]["classes"][-1] for s in c], minlength=4)
    assert per_class.tolist() == [0, 3, 3, 3]


def test_ratio_splits_are_seeded_and_disjoint(tmp_path, prepare):
    images, ann_file = _many_images_tree(tmp_path)
    args = ("coco", "--images", images, "--annotations", ann_file, "--classes", "person,bicycle,car",
            "--splits", "train=0.5,val=0.25,test=0.25")
    prepare(*args, "--out", tmp_path / "a")
    prepare(*args, "--out", tmp_path / "b")
    keys = {s: [x["key"] for x in read_shards(tmp_path / "a", s)] for s in ("train", "val", "test")}
    assert [len(keys[s]) for s in keys] == [12, 6, 6]
    assert len(set(sum(keys.values(), []))) == 24
    for s in keys:
        assert keys[s] == [x["key"] for x in read_shards(tmp_path / "b", s)]
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["splits"].keys() == {"train", "val", "test"}


def test_per_class_draw_decodes_only_the_images_it_keeps_and_passes_over_unusable_ones(tmp_path, monkeypatch):
    from segdist.prepare.sources.coco import annotation_file as coco_json, select as coco_select

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 32} for i in range(1, 201)]
    degenerate = [[1.0, 1.0]]  # fewer than 3 points: left out, so images 4, 8, ... hold nothing to draw
    anns = [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
             "segmentation": degenerate if i % 4 == 0 else square(2, 2, 20, 20)} for i in range(1, 201)]
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": 1, "name": "person"}]}))
    data = coco_json.load_annotations(ann_file)
    decoded = []
    real_decode = coco_json.CocoFile.segmentation
    monkeypatch.setattr(coco_json.CocoFile, "segmentation",
                        staticmethod(lambda ann: decoded.append(ann.image_id) or real_decode(ann)))
    specs, _ = coco_select.build_specs(data, tmp_path, data.categories, crowd="ignore", keep_empty=False,
                                       per_class=10, seed=3)
    assert len(specs) == 10 and all(s.image_id % 4 and s.instances for s in specs)
    kept = {s.image_id for s in specs}
    passed_over = set(decoded) - kept
    assert all(i % 4 == 0 for i in passed_over)  # only unusable candidates were decoded and left
    assert len(decoded) == len(set(decoded)) < 25  # each image decoded once, a small part of the 200
