"""`segdist predict`: a folder with a corrupt file, sizes kept, palette colours, the same answer as `infer`."""

import shutil

import cv2
import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from segdist.data.augment import eval_transform
from segdist.models.inference import TTA, infer, labels_at
from segdist.runs.run import load_run


@pytest.fixture
def inputs(tiny_run, tmp_path):
    """Two synthetic COCO JPEGs (80x60), an odd-sized PNG, a greyscale PNG, a corrupt JPEG and a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    raw = sorted((tiny_run.parents[1] / "raw" / "val").glob("*.jpg"))[:2]
    for path in raw:
        shutil.copy(path, folder)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 50, 3), np.uint8)).save(folder / "odd.png")
    Image.fromarray(rng.integers(0, 255, (100, 130), np.uint8), mode="L").save(folder / "grey.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not an input")
    return folder


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_a_folder_with_a_corrupt_file(tiny_run, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    run_cli("predict", "--run", tiny_run, "--input", inputs, "--out", out, "--batch-size", "2", "--workers", "1")
    printed = capsys.readouterr().out
    good = sorted(p for p in inputs.iterdir() if p.name not in ("corrupt.jpg", "notes.txt"))
    assert "wrote 4 prediction(s)" in printed
    assert f"skipped 1 unreadable file(s):\n  {inputs / 'corrupt.jpg'}: not a decodable image" in printed
    run = load_run(tiny_run)
    palette = np.array(run.palette, np.uint8)
    for path in good:
        size = _size(path)
        index = np.asarray(Image.open(out / "index" / f"{path.stem}.png"))
        colour = np.asarray(Image.open(out / "color" / f"{path.stem}.png"))
        assert _size(out / "index" / f"{path.stem}.png") == size and index.dtype == np.uint8
        assert index.max() < run.num_classes
        np.testing.assert_array_equal(colour, palette[index])
        assert _size(out / "overlay" / f"{path.stem}.jpg") == size
    assert sorted(p.name for p in (out / "index").iterdir()) == sorted(f"{p.stem}.png" for p in good)


def test_one_file_gives_what_infer_gives(tiny_run, inputs, tmp_path):
    image_path = sorted(inputs.glob("0*.jpg"))[0]  # a synthetic COCO image
    run_cli("predict", "--run", tiny_run, "--input", image_path, "--out", tmp_path / "out", "--tta", "flip")
    run = load_run(tiny_run)
    rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    resized = eval_transform(run.eval_size)(image=rgb)["image"]
    image = run.normalizer()(torch.from_numpy(resized.transpose(2, 0, 1).copy())[None])
    expected = labels_at(infer(run.model, image, tta=TTA(flip=True))[0], rgb.shape[:2]).numpy()
    written = np.asarray(Image.open(tmp_path / "out" / "index" / f"{image_path.stem}.png"))
    np.testing.assert_array_equal(written, expected)


def test_glob_inputs_and_user_errors(tiny_run, inputs, tmp_path, capsys):
    run_cli("predict", "--run", tiny_run, "--input", f"{inputs}/*.png", "--out", tmp_path / "png", "--workers", "0")
    assert sorted(p.name for p in (tmp_path / "png" / "index").iterdir()) == ["grey.png", "odd.png"]
    capsys.readouterr()
    (tmp_path / "clash").mkdir()
    shutil.copy(inputs / "odd.png", tmp_path / "clash" / "a.png")
    shutil.copy(inputs / "odd.png", tmp_path / "clash" / "a.jpg")
    cases = {
        str(inputs / "corrupt.jpg"): "none of the 1 input file(s) could be read",
        str(tmp_path / "nothing-here"): "no image files",
        str(tmp_path / "clash"): "share the file stem(s) ['a']",
    }
    for spec, message in cases.items():
        with pytest.raises(SystemExit):
            run_cli("predict", "--run", tiny_run, "--input", spec, "--out", tmp_path / "x", "--workers", "0")
        assert message in capsys.readouterr().err, spec
