"""`segdist stats` and `segdist show` on prepared shards."""

import numpy as np
import pytest
from helpers import run_cli, shared_data
from PIL import Image

from segdist.format.class_stats import class_weights

CAMVID = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


@pytest.fixture(scope="module")
def camvid(tmp_path_factory, ray_cluster):
    root = shared_data("camvid")
    out = tmp_path_factory.mktemp("camvid") / "ds"
    run_cli("prepare", "folder", "--images", root / "val", "--masks", root / "valannot", "--classes", CAMVID,
            "--source-ignore", "11", "--split", "val", "--out", out)
    return out


def test_stats_table_and_histogram(camvid, tmp_path, capsys):
    run_cli("stats", camvid, "--out", tmp_path)
    text = capsys.readouterr().out
    assert "split val: 101 samples in 1 shards" in text
    road = next(line for line in text.splitlines() if " Road " in line)
    assert float(road.split()[2].rstrip("%")) > 20  # Road is the most common CamVid class
    png = Image.open(tmp_path / "class_hist_val.png")
    assert png.size[0] > 400 and png.size[1] > 300


def test_class_weights():
    split = {"class_pixels": [600, 300, 100, 0], "class_image_pixels": [1000, 1000, 200, 0]}
    inverse = class_weights(split, "inverse")
    assert inverse == pytest.approx([1000 / (3 * 600), 1000 / (3 * 300), 1000 / (3 * 100), 0])
    freq = np.array([0.6, 0.3, 0.5])
    assert class_weights(split, "median_freq") == pytest.approx([*(0.5 / freq), 0])
    assert class_weights(split, "sqrt_median_freq") == pytest.approx([*np.sqrt(0.5 / freq), 0])
    with pytest.raises(ValueError, match="inverse, median_freq or sqrt_median_freq"):
        class_weights(split, "sqrt")


def test_show_writes_panels_from_the_shards(camvid, tmp_path):
    run_cli("show", camvid, "--split", "val", "--n", "3", "--out", tmp_path / "show")
    panels = sorted((tmp_path / "show").glob("*.png"))
    assert len(panels) == 3
    panel = np.asarray(Image.open(panels[0]))
    assert panel.shape == (360, 3 * 480 + 2 * 4, 3)
    left, middle = panel[:, :480], panel[:, 484:964]
    source = np.asarray(Image.open(shared_data("camvid") / "val" / f"{panels[0].stem}.jpg").convert("RGB"))
    assert np.array_equal(left, source)
    assert len(np.unique(middle.reshape(-1, 3), axis=0)) <= 12  # a colour per class plus ignore


def test_stats_on_missing_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("stats", tmp_path / "nope")
    assert "dataset.json does not exist" in capsys.readouterr().err
