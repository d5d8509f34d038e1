"""The synthetic COCO and Cityscapes writers produce real formats whose labels match their pixels."""

import hashlib
import re

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from segdist.sources.synthetic import write_synthetic_cityscapes, write_synthetic_coco


def _digest(root) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_coco_tree_is_real_coco_and_consistent(tmp_path):
    counts = write_synthetic_coco(tmp_path / "a", images=40, val_images=8, seed=1, width=160, height=120)
    assert counts == {"train": 40, "val": 8}
    coco = COCO(str(tmp_path / "a/annotations/instances_train.json"))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} >= {"person", "bicycle", "car"}
    anns = coco.loadAnns(coco.getAnnIds())
    crowd = [a for a in anns if a["iscrowd"]]
    compressed = [a for a in anns if not a["iscrowd"] and isinstance(a["segmentation"], dict)]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert compressed and all(isinstance(a["segmentation"]["counts"], str) for a in compressed)
    overlapping_images = 0
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(tmp_path / "a/train" / img["file_name"]))
        assert pixels.shape == (120, 160, 3)
        masks = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            m = coco.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"] > 0
            masks.append((ann["category_id"], m))
        for i, (ci, mi) in enumerate(masks):
            overlapping_images += any(cj != ci and (mi & mj).any() for cj, mj in masks[i + 1:])
    assert overlapping_images >= 5


def test_coco_is_deterministic(tmp_path):
    write_synthetic_coco(tmp_path / "a", images=6, val_images=2, seed=3, width=96, height=64)
    write_synthetic_coco(tmp_path / "b", images=6, val_images=2, seed=3, width=96, height=64)
    write_synthetic_coco(tmp_path / "c", images=6, val_images=2, seed=4, width=96, height=64)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_cityscapes_layout_and_label_ids(tmp_path):
    counts = write_synthetic_cityscapes(tmp_path, images=6, val_images=2, seed=0, width=128, height=64)
    assert counts == {"train": 6, "val": 2}
    images = sorted(tmp_path.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
    assert len(images) == 8
    seen = set()
    for path in images:
        assert re.fullmatch(r"[a-z]+_\d{6}_\d{6}_leftImg8bit\.png", path.name)
        split, city = path.parts[-3], path.parts[-2]
        label = tmp_path / "gtFine" / split / city / path.name.replace("leftImg8bit", "gtFine_labelIds")
        ids = np.asarray(Image.open(label))
        assert ids.dtype == np.uint8 and ids.shape == (64, 128) and ids.max() <= 33
        assert np.asarray(Image.open(path)).shape == (64, 128, 3)
        seen |= set(np.unique(ids).tolist())
    assert {7, 11, 23, 26} <= seen  # road, building, sky, car (train classes)
    assert seen & {0, 1, 4, 9}  # ids that must map to 255
