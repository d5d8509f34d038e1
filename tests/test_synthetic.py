"""Tests for the synthetic COCO and Cityscapes writers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segdist.synth.cityscapes import write_synthetic_cityscapes
from segdist.synth.coco import COCO_CLASS_COLOURS, write_synthetic_coco

W, H = 160, 120
EXPECTED_CATEGORIES = {
    1: ("person", "person"),
    2: ("bicycle", "vehicle"),
    3: ("car", "vehicle"),
    4: ("motorcycle", "vehicle"),
    5: ("airplane", "vehicle"),
    18: ("dog", "animal"),
}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _masks(coco: COCO, image_id: int) -> list[tuple[dict, np.ndarray]]:
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    return [(ann, coco.annToMask(ann).astype(bool)) for ann in anns]


def _visible(masks: list[tuple[dict, np.ndarray]]) -> list[tuple[dict, np.ndarray]]:
    """Each mask minus everything painted after it."""
    result = []
    covered = np.zeros_like(masks[0][1]) if masks else None
    for ann, mask in reversed(masks):
        result.append((ann, mask & ~covered))
        covered = covered | mask
    return result[::-1]


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


# ----------------------------------------------------------------------------- COCO


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    counts = write_synthetic_coco(root, 60, seed=3, width=W, height=H)
    assert counts == {"train": 60, "val": 15}
    return root


@pytest.fixture(scope="module")
def coco_train(coco_root: Path) -> COCO:
    return COCO(str(coco_root / "annotations" / "instances_train.json"))


@pytest.fixture(scope="module")
def stats_doc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A larger, tiny-image run for checking the advertised proportions."""
    root = tmp_path_factory.mktemp("coco_stats")
    write_synthetic_coco(root, 600, val_images=0, seed=11, width=80, height=60)
    return json.loads((root / "annotations" / "instances_train.json").read_text())


def test_coco_layout(coco_root: Path) -> None:
    train = json.loads((coco_root / "annotations" / "instances_train.json").read_text())
    val = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    for split, doc, count in (("train", train, 60), ("val", val, 15)):
        assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
        assert len(doc["images"]) == count
        for image in doc["images"]:
            assert image["file_name"] == f"{image['id']:012d}.jpg"
            assert (image["width"], image["height"]) == (W, H)
            assert (coco_root / split / image["file_name"]).is_file()
        assert {c["id"]: (c["name"], c["supercategory"]) for c in doc["categories"]} == (
            EXPECTED_CATEGORIES
        )
    train_ids = {i["id"] for i in train["images"]}
    val_ids = {i["id"] for i in val["images"]}
    assert not train_ids & val_ids
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    val_image_ids = {a["image_id"] for a in val["annotations"]}
    assert val_image_ids <= val_ids


def test_coco_annotation_fields(coco_train: COCO) -> None:
    keys = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    for ann in coco_train.dataset["annotations"]:
        assert set(ann) == keys
        assert ann["category_id"] in EXPECTED_CATEGORIES
        assert ann["iscrowd"] in (0, 1)
        assert isinstance(ann["area"], float)
        assert len(ann["bbox"]) == 4


def test_coco_images_decode_to_size(coco_root: Path) -> None:
    files = sorted((coco_root / "train").glob("*.jpg")) + sorted((coco_root / "val").glob("*.jpg"))
    assert len(files) == 75
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (W, H)


def test_area_and_bbox_match_decoded_mask(coco_train: COCO) -> None:
    for ann in coco_train.dataset["annotations"]:
        mask = coco_train.annToMask(ann)
        assert ann["area"] == float(mask.sum()) > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y) == (xs.min(), ys.min())
        assert (x + w, y + h) == (xs.max() + 1, ys.max() + 1)


def test_polygons_are_well_formed(coco_train: COCO) -> None:
    polygons = [
        part
        for ann in coco_train.dataset["annotations"]
        if isinstance(ann["segmentation"], list)
        for part in ann["segmentation"]
    ]
    assert polygons
    for poly in polygons:
        assert len(poly) % 2 == 0 and 8 <= len(poly) // 2 <= 20
        xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
        assert xs.min() >= 0 and xs.max() <= W and ys.min() >= 0 and ys.max() <= H
        assert all(round(v, 2) == v for v in poly)


def test_crowd_annotations_are_uncompressed_rle(coco_train: COCO) -> None:
    crowds = [a for a in coco_train.dataset["annotations"] if a["iscrowd"] == 1]
    assert crowds
    for ann in crowds:
        seg = ann["segmentation"]
        assert isinstance(seg, dict) and seg["size"] == [H, W]
        assert isinstance(seg["counts"], list) and all(isinstance(c, int) for c in seg["counts"])
        assert sum(seg["counts"]) == H * W
    per_image = [a["image_id"] for a in crowds]
    assert len(per_image) == len(set(per_image))


def test_uncompressed_rle_is_column_major(coco_train: COCO) -> None:
    ann = next(a for a in coco_train.dataset["annotations"] if a["iscrowd"] == 1)
    counts = ann["segmentation"]["counts"]
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    expected = values.reshape((W, H)).T
    assert np.array_equal(coco_train.annToMask(ann), expected)


def test_compressed_rle_instances(coco_train: COCO) -> None:
    compressed = [
        a
        for a in coco_train.dataset["annotations"]
        if a["iscrowd"] == 0 and isinstance(a["segmentation"], dict)
    ]
    assert compressed
    for ann in compressed:
        seg = ann["segmentation"]
        assert isinstance(seg["counts"], str) and seg["size"] == [H, W]
        decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        assert decoded.sum() == ann["area"]


def test_overlapping_instances_of_different_classes(coco_train: COCO) -> None:
    overlapping = 0
    for image_id in coco_train.getImgIds():
        masks = _masks(coco_train, image_id)
        overlapping += any(
            a["category_id"] != b["category_id"] and (ma & mb).any()
            for i, (a, ma) in enumerate(masks)
            for b, mb in masks[i + 1 :]
        )
    assert overlapping >= 0.3 * len(coco_train.getImgIds())


def test_instances_are_painted_with_class_appearance(coco_root: Path, coco_train: COCO) -> None:
    """Visible instance pixels carry their class colour and differ from their surroundings."""
    names = sorted(COCO_CLASS_COLOURS)
    palette = np.array([COCO_CLASS_COLOURS[c] for c in names], np.float64)
    palette /= palette.sum(axis=1, keepdims=True)
    contrasts = []
    for image_id in coco_train.getImgIds():
        info = coco_train.loadImgs([image_id])[0]
        pixels = np.asarray(Image.open(coco_root / "train" / info["file_name"]), np.float64)
        masks = _masks(coco_train, image_id)
        union = np.zeros((H, W), bool)
        for _, mask in masks:
            union |= mask
        for ann, visible in _visible(masks):
            core = _erode(visible, 2)
            if ann["iscrowd"] or core.sum() < 30:
                continue
            mean = pixels[core].mean(axis=0)
            chroma = mean / mean.sum()
            nearest = names[int(np.argmin(np.abs(palette - chroma).sum(axis=1)))]
            assert nearest == ann["category_id"]
            ring = cv2.dilate(visible.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            ring &= ~_erode(ring, 2) & ~union
            if ring.sum() >= 30:
                difference = pixels[core].mean(axis=0) - pixels[ring].mean(axis=0)
                contrasts.append(np.abs(difference).sum())
    assert len(contrasts) > 20
    assert np.median(contrasts) > 60


def test_class_textures(coco_root: Path, coco_train: COCO) -> None:
    """Every class is textured; person stripes run horizontally and car stripes vertically."""
    gradients: dict[int, list[tuple[float, float]]] = {c: [] for c in EXPECTED_CATEGORIES}
    for image_id in coco_train.getImgIds():
        info = coco_train.loadImgs([image_id])[0]
        image = Image.open(coco_root / "train" / info["file_name"]).convert("L")
        grey = np.asarray(image, np.float64)
        dx = np.abs(np.diff(grey, axis=1))[:-1, :]
        dy = np.abs(np.diff(grey, axis=0))[:, :-1]
        for ann, visible in _visible(_masks(coco_train, image_id)):
            core = _erode(visible, 2)[:-1, :-1]
            if not ann["iscrowd"] and core.sum() >= 30:
                gradients[ann["category_id"]].append((dx[core].mean(), dy[core].mean()))
    for category_id, values in gradients.items():
        assert values, category_id
        gx, gy = np.mean(values, axis=0)
        assert gx + gy > 6, category_id
        if category_id == 1:
            assert gy > 2 * gx
        if category_id == 3:
            assert gx > 2 * gy


def test_coco_proportions(stats_doc: dict) -> None:
    images = stats_doc["images"]
    anns = stats_doc["annotations"]
    per_image: dict[int, list[dict]] = {}
    for ann in anns:
        per_image.setdefault(ann["image_id"], []).append(ann)
    n = len(images)
    empty = n - len(per_image)
    crowd_images = sum(any(a["iscrowd"] for a in group) for group in per_image.values())
    things = [a for a in anns if a["iscrowd"] == 0]
    compressed = sum(isinstance(a["segmentation"], dict) for a in things)
    two_part = sum(
        isinstance(a["segmentation"], list) and len(a["segmentation"]) == 2 for a in things
    )
    assert 0.01 * n <= empty <= 0.12 * n
    assert 0.04 * n <= crowd_images <= 0.18 * n
    assert 0.015 * len(things) <= compressed <= 0.10 * len(things)
    assert two_part > 0
    assert max(len(group) for group in per_image.values()) <= 6


def test_coco_is_deterministic(tmp_path: Path) -> None:
    kwargs = {"images": 6, "width": 96, "height": 72}
    write_synthetic_coco(tmp_path / "a", seed=5, **kwargs)
    write_synthetic_coco(tmp_path / "b", seed=5, **kwargs)
    write_synthetic_coco(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_coco_image_does_not_depend_on_image_count(tmp_path: Path) -> None:
    write_synthetic_coco(tmp_path / "small", 3, seed=2, width=96, height=72)
    write_synthetic_coco(tmp_path / "large", 7, seed=2, width=96, height=72)
    for image_id in (1, 2, 3):
        name = f"train/{image_id:012d}.jpg"
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


def test_coco_split_sizes(tmp_path: Path) -> None:
    assert write_synthetic_coco(tmp_path / "a", 2, width=64, height=48) == {"train": 2, "val": 1}
    assert write_synthetic_coco(tmp_path / "b", 9, width=64, height=48) == {"train": 9, "val": 2}
    counts = write_synthetic_coco(tmp_path / "c", 3, val_images=4, width=64, height=48)
    assert counts == {"train": 3, "val": 4}
    assert len(list((tmp_path / "c" / "val").glob("*.jpg"))) == 4
    with pytest.raises(ValueError):
        write_synthetic_coco(tmp_path / "d", -1)


# ----------------------------------------------------------------------- Cityscapes

CS_NAME = re.compile(
    r"^(?P<city>[a-z]+)_000000_(?P<n>\d{6})_(?P<kind>leftImg8bit|gtFine_labelIds)\.png$"
)
VOID_IDS = {0, 1, 4, 9}
TRAIN_IDS_USED = {7, 8, 11, 17, 20, 21, 23, 24, 26}
OFFICIAL_COLOURS = {7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70), 23: (70, 130, 180)}


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    assert write_synthetic_cityscapes(root, 8, seed=1, width=W, height=H) == {"train": 8, "val": 2}
    return root


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(leftImg8bit path, matching gtFine labelIds path) for every frame of a split."""
    pairs = []
    for image in sorted((root / "leftImg8bit" / split).glob("*/*.png")):
        label_name = image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        pairs.append((image, root / "gtFine" / split / image.parent.name / label_name))
    assert all(label.is_file() for _, label in pairs)
    return pairs


def test_cityscapes_layout(cityscapes_root: Path) -> None:
    expected_cities = {"train": {"aachen", "bochum"}, "val": {"frankfurt"}}
    for split, count in (("train", 8), ("val", 2)):
        for top in ("leftImg8bit", "gtFine"):
            files = sorted((cityscapes_root / top / split).glob("*/*"))
            assert len(files) == count
            for path in files:
                match = CS_NAME.match(path.name)
                assert match, path.name
                assert match["city"] == path.parent.name
                kind = "leftImg8bit" if top == "leftImg8bit" else "gtFine_labelIds"
                assert match["kind"] == kind
            assert {p.parent.name for p in files} == expected_cities[split]
    for path in (cityscapes_root / "leftImg8bit" / "train").glob("*/*.png"):
        index = int(CS_NAME.match(path.name)["n"])
        assert path.parent.name == ("aachen", "bochum")[index % 2]


def test_cityscapes_files_decode(cityscapes_root: Path) -> None:
    for split in ("train", "val"):
        for image_path, label_path in _pairs(cityscapes_root, split):
            with Image.open(image_path) as image:
                assert image.mode == "RGB" and image.size == (W, H)
            with Image.open(label_path) as label:
                assert label.mode == "L"
                labels = np.asarray(label)
            assert labels.dtype == np.uint8 and labels.shape == (H, W)
            assert labels.max() <= 33


def test_cityscapes_label_content(cityscapes_root: Path) -> None:
    seen: set[int] = set()
    for split in ("train", "val"):
        for _, label_path in _pairs(cityscapes_root, split):
            labels = np.asarray(Image.open(label_path))
            seen |= set(np.unique(labels).tolist())
            assert (labels[0] == 23).mean() > 0.5
            assert (labels[-1] == 1).all()
    assert VOID_IDS <= seen
    assert TRAIN_IDS_USED <= seen


def test_cityscapes_colours_follow_labels(cityscapes_root: Path) -> None:
    for image_path, label_path in _pairs(cityscapes_root, "train"):
        pixels = np.asarray(Image.open(image_path), np.float64)
        labels = np.asarray(Image.open(label_path))
        for label_id, colour in OFFICIAL_COLOURS.items():
            region = labels == label_id
            if region.sum() > 50:
                assert np.abs(pixels[region].mean(axis=0) - colour).max() < 40, label_id


def test_cityscapes_is_deterministic(tmp_path: Path) -> None:
    kwargs = {"images": 2, "val_images": 1, "width": 96, "height": 64}
    write_synthetic_cityscapes(tmp_path / "a", seed=4, **kwargs)
    write_synthetic_cityscapes(tmp_path / "b", seed=4, **kwargs)
    write_synthetic_cityscapes(tmp_path / "c", seed=5, **kwargs)
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_coco_like_train2017_is_seeded_shaped_like_coco_and_writes_only_the_images_asked_for(tmp_path: Path) -> None:
    from helpers import run_cli

    for name in ("a", "b"):
        run_cli("synth", "coco", "--like-train2017", "--images", "600", "--images-for", "bicycle,car",
                "--out", tmp_path / name)
    ann_file = tmp_path / "a/annotations/instances_train.json"
    assert ann_file.read_bytes() == (tmp_path / "b/annotations/instances_train.json").read_bytes()
    coco = COCO(str(ann_file))
    assert len(coco.getImgIds()) == 600 and len(coco.getCatIds()) == 80
    assert coco.loadCats(90)[0]["name"] == "toothbrush"  # COCO's own ids, with its gaps
    anns = coco.loadAnns(coco.getAnnIds())
    assert 6 < len(anns) / 600 < 9  # train2017: 7.3 instances per image
    person_share = len(coco.getImgIds(catIds=[1])) / 600
    assert 0.45 < person_share < 0.63  # train2017: 54%
    vertices = [len(p) // 2 for a in anns if not a["iscrowd"] for p in a["segmentation"]]
    assert 15 <= np.median(vertices) <= 27
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], str) for a in crowd)
    for a in crowd:
        img = coco.loadImgs(a["image_id"])[0]
        assert mask_utils.decode(coco.annToRLE(a)).shape == (img["height"], img["width"])
    wanted = set(coco.getImgIds(catIds=[2])) | set(coco.getImgIds(catIds=[3]))
    written = {int(p.stem) for p in (tmp_path / "a/train").glob("*.jpg")}
    assert written == wanted
    some = coco.loadImgs(min(wanted))[0]
    assert Image.open(tmp_path / "a/train" / some["file_name"]).size == (some["width"], some["height"])


def test_coco_like_train2017_refuses_an_unknown_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from helpers import run_cli

    with pytest.raises(SystemExit):
        run_cli("synth", "coco", "--like-train2017", "--images", "10", "--images-for", "persn", "--out", tmp_path)
    assert "not COCO classes: persn" in capsys.readouterr().err
    assert not (tmp_path / "annotations").exists()
