"""`--outputs probs`: per-class probabilities at the image's size that sum to 1 and whose argmax is the index;
`Run.classify` is the argmax of `Run.probabilities` and gives the labels it gave before."""

import numpy as np
import pytest
import torch
from helpers import shared_data
from PIL import Image

from segdist.data.augment import eval_input
from segdist.evaluation.predict import predict
from segdist.models.inference import TTA, autocast, infer_each, labels_at
from segdist.runs.run import load_run
from segdist.utils.images import decode_rgb

FLIP = TTA(flip=True)


@pytest.fixture
def frames():
    return sorted((shared_data("camvid") / "val").glob("*.jpg"))[:3]


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_probabilities_sum_to_one_and_their_argmax_is_the_index(tiny_run, frames, tmp_path, dtype):
    run = load_run(tiny_run)
    listing = tmp_path / "frames.txt"
    listing.write_text("\n".join(map(str, frames)))
    predict(tiny_run, f"@{listing}", tmp_path / "out", outputs=["index", "probs"], probs_dtype=dtype, tta=FLIP,
            workers=0)
    tolerance = run.num_classes / 255 if dtype == "uint8" else 1e-2  # each class rounded by up to half a step
    for frame in frames:
        index = np.asarray(Image.open(tmp_path / "out/index" / f"{frame.stem}.png"))
        with np.load(tmp_path / "out/probs" / f"{frame.stem}.npz") as f:  # as outputs.py documents it
            stored, scale, classes = f["probs"], f["scale"], list(f["classes"])
        assert stored.dtype == np.dtype(dtype) and classes == run.classes
        assert stored.shape == (run.num_classes, *index.shape) == (run.num_classes, 360, 480)
        probs = stored.astype(np.float32) * scale
        assert np.abs(probs.sum(0) - 1).max() <= tolerance
        # the index's class holds the top stored value everywhere; rounding may tie it with another class
        top = stored.max(0)
        np.testing.assert_array_equal(np.take_along_axis(stored, index[None].astype(np.int64), 0)[0], top)
        unique = (stored == top).sum(0) == 1
        np.testing.assert_array_equal(stored.argmax(0)[unique], index[unique])
        assert unique.mean() > 0.9


def test_classify_is_the_argmax_of_probabilities_and_unchanged(tiny_run, frames):
    run = load_run(tiny_run)
    rgbs = [decode_rgb(np.fromfile(frame, np.uint8)) for frame in frames]
    images, sizes = [eval_input(rgb, run.eval_size, run.resize_side) for rgb in rgbs], [rgb.shape[:2] for rgb in rgbs]
    device = torch.device("cpu")
    labels = run.classify(images, sizes, device, tta=FLIP)
    # what classify computed before probabilities() existed
    model, normalize = run.model_on(device), run.normalizer()
    with torch.no_grad(), autocast(device, run.config.train.mixed_precision):
        probs = infer_each(model, [normalize(image[None])[0] for image in images], "whole", tta=FLIP)
    before = [labels_at(p, size).numpy() for p, size in zip(probs, sizes)]
    for new, old, full in zip(labels, before, run.probabilities(images, sizes, device, tta=FLIP)):
        np.testing.assert_array_equal(new, old)
        np.testing.assert_array_equal(new, full.argmax(0).numpy())
        assert full.shape == (run.num_classes, 360, 480)
        torch.testing.assert_close(full.sum(0), torch.ones(360, 480))
