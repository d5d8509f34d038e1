"""More than 255 classes: uint16 label maps, ignore index 65535, classes 255 and 299 scored like any other."""

import json

import numpy as np
import pytest
from helpers import run_cli, run_train
from PIL import Image

CLASSES = 300


@pytest.fixture(scope="module")
def many(tmp_path_factory, ray_cluster):
    """A folder dataset whose uint16 masks use classes 0..299, 255 and 299 in every image, and ignore pixels."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((64, 96), np.uint16)
            mask[:32, :48], mask[32:, :48], mask[:, 48:64] = 255, 299, rng.integers(1, CLASSES)
            mask[:4, 90:] = 65535  # the ignore index in the source masks
            image = np.stack([(mask * 7) % 251, (mask * 13) % 251, (mask * 3) % 251], -1).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{i}.png")
        run_cli("prepare", "folder", "--images", root / split / "images", "--masks", root / split / "masks",
                "--classes", ",".join(f"c{k}" for k in range(CLASSES)), "--split", split, "--out", root / "shards")
    return root


@pytest.mark.slow
def test_three_hundred_classes_train_evaluate_and_export(many, tmp_path):
    manifest = json.loads((many / "shards/dataset.json").read_text())
    assert manifest["ignore_index"] == 65535 and manifest["label_dtype"] == "uint16"
    run_train(many / "shards", tmp_path, "train.max_steps=3", "data.workers=0", "train.name=many",
              "data.crop_size=[64,64]", "data.base_size=null", "data.val_size=null", "data.batch_size=3")
    from segdist.evaluation.evaluate import evaluate

    report = evaluate(tmp_path / "many", checkpoint="last", workers=0)
    confusion = np.asarray(report["confusion"])
    assert confusion.shape == (CLASSES, CLASSES)
    for name, index in (("c255", 255), ("c299", 299)):
        assert confusion[index].sum() == 3 * 32 * 48  # every labelled pixel counted, none taken for ignore
        assert not np.isnan(report["per_class"][name]["iou"]), name
    assert confusion.sum() == 3 * (64 * 96 - 4 * 6)  # the 65535 pixels are left out
    assert (tmp_path / "many/eval/val/confusion.png").is_file()
    from segdist.evaluation.export import export

    exported = export(tmp_path / "many", "torchscript", checkpoint="last")
    import torch

    extra = {"segdist.json": ""}
    torch.jit.load(exported["path"], _extra_files=extra)
    assert json.loads(extra["segdist.json"])["segdist.ignore_index"] == "65535"
