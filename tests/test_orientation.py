"""EXIF orientation: the stored pixel grid everywhere, so image and label stay aligned pixel for pixel.

JPEGs carrying each EXIF orientation 1-8, with a non-square, asymmetric label (the mask PNG, on
the stored grid), go through prepare -> training loader -> evaluate -> predict. The image's pixel
colours encode the class, and an "oracle" model reads the class back from the colour, so any
turn, flip or transpose between image and label shows as a mismatch.
"""

import numpy as np
import pytest
import torch
from helpers import read_shards, run_cli, train_plan
from PIL import Image

from segdist.config import load_config
from segdist.data.info import load_dataset_info
from segdist.data.train_loader import train_loader

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.float32)
H, W, BLOCK = 64, 96, 16


def _label() -> np.ndarray:
    """16-pixel blocks with classes (row * 6 + col) % 5: changed by any flip, turn or transpose."""
    rows, cols = np.indices((H // BLOCK, W // BLOCK))
    return np.kron((rows * 6 + cols) % 5, np.ones((BLOCK, BLOCK), np.int64)).astype(np.uint8)


@pytest.fixture(scope="module")
def oriented(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("exif")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    label = _label()
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(PALETTE[label].astype(np.uint8)).save(root / "images" / f"o{orientation}.jpg", quality=100,
                                                              subsampling=0, exif=exif.tobytes())
        Image.fromarray(label).save(root / "masks" / f"o{orientation}.png")
    for split in ("train", "val"):
        run_cli("prepare", "folder", "--images", root / "images", "--masks", root / "masks", "--classes",
                "black,red,green,blue,white", "--split", split, "--out", root / "shards", "--shard-size", "3")
    return root


def _classes_of(rgb: np.ndarray) -> np.ndarray:
    """The class each pixel's colour is nearest to."""
    return np.argmin(((rgb[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1), axis=-1)


class ColourOracle(torch.nn.Module):
    """Logits = minus the distance of each pixel's (un-normalised) colour to each class colour."""

    def __init__(self, mean, std):  # noqa: ANN001
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.register_buffer("palette", torch.from_numpy(PALETTE))

    def forward(self, x):  # noqa: ANN001
        rgb = x * self.std + self.mean
        return -((rgb[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)


def _oracle_run(oriented, tmp_path):  # noqa: ANN001
    from segdist.data.info import IMAGENET_MEAN, IMAGENET_STD
    from segdist.runs.run import Run

    info = load_dataset_info(oriented / "shards")
    cfg = load_config(None, [f"data.shards={oriented / 'shards'}", "data.normalize=imagenet", "data.workers=0"])
    (tmp_path / "run").mkdir(exist_ok=True)
    return Run(tmp_path / "run", info.manifest, cfg, tmp_path / "run/oracle", None,
               ColourOracle(IMAGENET_MEAN, IMAGENET_STD).eval())


def test_prepare_keeps_the_stored_grid(oriented):
    info = load_dataset_info(oriented / "shards")
    for split in ("train", "val"):
        assert info.split(split)["samples"] == 8
        samples = read_shards(oriented / "shards", split)  # decoded by PIL alone, EXIF orientation not applied
        assert sorted(s["key"] for s in samples) == [f"o{orientation}" for orientation in range(1, 9)]
        for sample in samples:
            assert sample["image"].shape == (H, W, 3) and np.array_equal(sample["label"], _label()), sample["key"]
            assert np.array_equal(_classes_of(sample["image"]), _label()), sample["key"]


def test_the_training_loader_keeps_image_and_label_aligned(oriented):
    cfg = load_config(None, [f"data.shards={oriented / 'shards'}", f"data.crop_size=[{H},{W}]",
                             "data.scale_range=[1.0,1.0]", "data.hflip=0.0", "data.batch_size=8", "data.workers=0",
                             "data.shuffle_window=8"]).data
    info = load_dataset_info(oriented / "shards")
    with train_loader(cfg, info, train_plan(cfg, info), rank=0, start=0, end=2) as loader:
        for images, labels, _ in loader:
            assert images.shape[-2:] == (H, W)
            for image, label in zip(images, labels):
                assert np.array_equal(_classes_of(image.numpy().transpose(1, 2, 0)), label.numpy())


def test_evaluate_scores_a_perfect_oracle_perfectly(oriented, tmp_path, monkeypatch):
    import segdist.evaluation.evaluate

    monkeypatch.setattr(segdist.evaluation.evaluate, "load_run", lambda *a, **k: _oracle_run(oriented, tmp_path))
    report = segdist.evaluation.evaluate.evaluate(tmp_path / "run", shards=oriented / "shards", workers=0)
    assert report["samples"] == 8 and report["pixel_accuracy"] == 1.0 and report["miou"] == 1.0


def test_predict_writes_labels_on_the_stored_grid(oriented, tmp_path, monkeypatch):
    import segdist.evaluation.predict

    monkeypatch.setattr(segdist.evaluation.predict, "load_run", lambda *a, **k: _oracle_run(oriented, tmp_path))
    segdist.evaluation.predict.predict(tmp_path / "run", str(oriented / "images"), tmp_path / "pred", workers=0)
    for orientation in range(1, 9):
        predicted = np.asarray(Image.open(tmp_path / "pred/index" / f"o{orientation}.png"))
        assert np.array_equal(predicted, _label()), orientation
