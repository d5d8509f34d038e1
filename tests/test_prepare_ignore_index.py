"""--ignore-index: 300 classes in uint16 label maps, VOC-style 255 borders, and every source honouring it."""

import numpy as np
import pytest
from helpers import manifest, read_shards, square, write_coco
from PIL import Image

from segdist.synth.cityscapes import write_synthetic_cityscapes


def _folder(root, masks: list[np.ndarray]):
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for i, mask in enumerate(masks):
        Image.new("RGB", mask.shape[::-1], (i, 2 * i, 3 * i)).save(root / "img" / f"m{i}.png")
        Image.fromarray(mask).save(root / "mask" / f"m{i}.png")
    return root / "img", root / "mask"


def test_300_classes_give_uint16_labels_with_ignore_65535_and_classes_255_and_299_counted(tmp_path, prepare):
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 300, (20, 30), dtype=np.uint16) for _ in range(3)]
    masks[0][0, :7] = 255
    masks[1][1, :5] = 299
    images, mask_dir = _folder(tmp_path, masks)
    classes = ",".join(f"c{i}" for i in range(300))
    out = tmp_path / "out"
    prepare("folder", "--images", images, "--masks", mask_dir, "--classes", classes, "--out", out)

    m = manifest(out)
    assert m["ignore_index"] == 65535 and m["label_dtype"] == "uint16" and m["num_classes"] == 300
    expected = np.bincount(np.concatenate([x.ravel() for x in masks]), minlength=300)
    rec = m["splits"]["train"]
    assert rec["class_pixels"] == expected.tolist() and rec["ignore_pixels"] == 0
    assert rec["class_pixels"][255] >= 7 and rec["class_pixels"][299] >= 5
    for sample in read_shards(out, "train"):
        i = int(sample["key"][1:])
        assert sample["label"].dtype == np.uint16 and np.array_equal(sample["label"], masks[i])
        assert sample["meta"]["classes"] == np.unique(masks[i]).tolist()


def test_voc_style_255_borders_mean_ignore_without_any_option(tmp_path, prepare):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 20
    mask[3, 3:13] = 255  # VOC's object border
    images, mask_dir = _folder(tmp_path, [mask])
    out = tmp_path / "out"
    prepare("folder", "--images", images, "--masks", mask_dir, "--classes", ",".join(f"c{i}" for i in range(21)),
            "--out", out)
    (sample,) = read_shards(out, "train")
    assert np.array_equal(sample["label"], mask) and sample["label"].dtype == np.uint8
    assert manifest(out)["splits"]["train"]["ignore_pixels"] == 10


def test_a_chosen_ignore_index_replaces_255_in_folder_masks(tmp_path, prepare, capsys):
    mask = np.zeros((8, 8), np.uint8)
    mask[0, :2] = 100
    mask[1, :3] = 7
    images, mask_dir = _folder(tmp_path, [mask])
    args = ("folder", "--images", images, "--masks", mask_dir, "--classes", "a,b,c,d", "--ignore-index", "100")
    with pytest.raises(SystemExit):
        prepare(*args, "--out", tmp_path / "bad")
    assert "mask values [7] are outside the class range 0..3" in capsys.readouterr().err
    prepare(*args, "--source-ignore", "7", "--out", tmp_path / "out")
    (sample,) = read_shards(tmp_path / "out", "train")
    assert sample["label"][0, :2].tolist() == [100, 100] and sample["label"][1, :3].tolist() == [100] * 3
    assert manifest(tmp_path / "out")["ignore_index"] == 100


@pytest.mark.parametrize("value,problem", [("3", "between the number of classes (4) and 65535"),
                                           ("70000", "between the number of classes (4) and 65535")])
def test_an_ignore_index_that_is_a_class_or_too_large_is_refused(tmp_path, prepare, capsys, value, problem):
    images, mask_dir = _folder(tmp_path, [np.zeros((4, 4), np.uint8)])
    with pytest.raises(SystemExit):
        prepare("folder", "--images", images, "--masks", mask_dir, "--classes", "a,b,c,d", "--ignore-index", value,
                "--out", tmp_path / "out")
    assert f"--ignore-index {value} must be {problem}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cityscapes_maps_its_ignored_labels_to_the_chosen_value(tmp_path, prepare):
    write_synthetic_cityscapes(tmp_path / "cs", images=1, val_images=1, seed=2, width=64, height=32)
    out = tmp_path / "out"
    prepare("cityscapes", "--root", tmp_path / "cs", "--split", "val", "--ignore-index", "19", "--out", out)
    (sample,) = read_shards(out, "val")
    label_ids = np.asarray(Image.open(next((tmp_path / "cs/gtFine/val").rglob("*_labelIds.png"))))
    ignored = np.isin(label_ids, [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33],
                      invert=True)
    assert ignored.any() and np.all(sample["label"][ignored] == 19) and np.all(sample["label"][~ignored] < 19)
    assert manifest(out)["ignore_index"] == 19


def test_coco_crowd_regions_take_the_chosen_value(tmp_path, prepare):
    anns = [{"image_id": 1, "category_id": 1, "segmentation": square(2, 2, 10, 10)},
            {"image_id": 1, "category_id": 1, "segmentation": square(20, 2, 28, 10), "iscrowd": 1}]
    images, ann_file = write_coco(tmp_path, [{"id": 1, "width": 32, "height": 16}], anns)
    out = tmp_path / "out"
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person", "--ignore-index", "254",
            "--out", out)
    (sample,) = read_shards(out, "train")
    assert np.all(sample["label"][3:9, 21:27] == 254) and np.all(sample["label"][3:9, 3:9] == 1)
