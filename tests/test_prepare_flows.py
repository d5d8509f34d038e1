"""Each source's second flow: `segdist prepare` (train and val) -> `segdist train` 20 steps -> `segdist evaluate`.

The layouts are those of test_prepare_layouts, built from real CamVid frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli, run_train
from test_prepare_layouts import ade, camvid_frames, voc  # noqa: F401 - module fixtures reused

pytestmark = pytest.mark.slow


def prepare_voc(layouts: dict, out: Path) -> None:
    run_cli("prepare", "voc", "--root", layouts["voc"]["root"], "--split", "train", "--sbd", layouts["voc"]["sbd"],
            "--out", out)
    run_cli("prepare", "voc", "--root", layouts["voc"]["root"], "--split", "val", "--out", out)


def prepare_ade20k(layouts: dict, out: Path) -> None:
    for split in ("train", "val"):
        run_cli("prepare", "ade20k", "--root", layouts["ade"]["root"], "--split", split, "--out", out)


def prepare_labelme(layouts: dict, out: Path) -> None:
    tree = layouts["labelme"]
    for split in ("train", "val"):
        run_cli("prepare", "labelme", "--root", tree["root"], "--classes", tree["classes"], "--split", split,
                "--list", tree[f"{split}_list"], "--out", out)


@pytest.fixture(scope="module")
def labelme_tree(tmp_path_factory) -> dict:
    """Six real CamVid frames annotated in LabelMe files: a road polygon, a car rectangle, a tree circle."""
    root = tmp_path_factory.mktemp("labelme")
    stems = []
    for i, (stem, jpg, _) in enumerate(camvid_frames(6)):
        shapes = [{"label": "road", "shape_type": "polygon", "points": [[0, 359], [479, 359], [300, 200], [180, 200]]},
                  {"label": "car", "shape_type": "rectangle", "points": [[40 + 10 * i, 220], [140 + 10 * i, 300]]},
                  {"label": "tree", "shape_type": "circle", "points": [[400, 80], [400, 80 + 20 + i]]}]
        (root / f"{stem}.json").write_text(json.dumps({"version": "5.4.1", "shapes": shapes, "imagePath": str(jpg),
                                                       "imageData": None, "imageHeight": 360, "imageWidth": 480}))
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems[:4]))
    (root / "val.txt").write_text("\n".join(stems[4:]))
    return {"root": root, "classes": "road,car,tree", "train_list": root / "train.txt", "val_list": root / "val.txt"}


PREPARE = {"voc": prepare_voc, "ade20k": prepare_ade20k, "labelme": prepare_labelme}


@pytest.fixture
def layouts(voc, ade, labelme_tree) -> dict:  # noqa: F811 - the fixtures imported above
    return {"voc": voc, "ade": ade, "labelme": labelme_tree}


@pytest.mark.parametrize("source", sorted(PREPARE))
def test_prepare_train_evaluate(source, layouts, tmp_path, ray_cluster):
    shards, runs = tmp_path / "shards", tmp_path / "runs"
    PREPARE[source](layouts, shards)
    run_train(shards, runs, "data.batch_size=2", "train.max_steps=20", "train.val_every=10", f"train.name={source}")
    run_cli("evaluate", "--run", runs / source, "--checkpoint", "last")
    metrics = json.loads((runs / source / "eval/val/metrics.json").read_text())
    classes = json.loads((shards / "dataset.json").read_text())["classes"]
    val_pixels = json.loads((shards / "dataset.json").read_text())["splits"]["val"]["pixels"]
    assert metrics["class_names"] == classes and metrics["pixels"] > 0.5 * val_pixels  # ignore pixels not scored
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["pixel_accuracy"] > 0
