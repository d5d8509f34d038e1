"""Datasets as they come: VOC (+SBD train_aug), ADE20K, Cityscapes coarse, the folder source's split lists,
remaps and nested folders, and COCO exports whose masks are crowd RLE.

Every layout is built in tmp_path from the real CamVid frames and masks beside the checkout (never
committed data); the expected labels are computed here from the source masks, pixel for pixel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import manifest, read_shards, shared_data, square, write_coco
from PIL import Image
from scipy.io import savemat

from segdist.utils.viz import default_palette

CAMVID_VOID = 11


def camvid_frames(count: int, offset: int = 0) -> list[tuple[str, Path, np.ndarray]]:
    """(stem, jpg path, mask values) of `count` real CamVid training frames."""
    root = shared_data("camvid")
    images = sorted((root / "train").glob("*.jpg"))[offset : offset + count]
    return [(p.stem, p, np.asarray(Image.open(root / "trainannot" / f"{p.stem}.png"))) for p in images]


def save_palette_png(values: np.ndarray, path: Path) -> None:
    """A palette-mode PNG, as VOC's SegmentationClass files are."""
    image = Image.fromarray(values.astype(np.uint8), "P")
    image.putpalette([c for rgb in default_palette(256) for c in rgb])
    image.save(path)


def labels_by_key(out: Path, split: str) -> dict[str, np.ndarray]:
    return {s["key"]: s["label"] for s in read_shards(out, split)}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


# --- Pascal VOC and SBD -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> dict:
    """A VOC2012 tree (6 labelled frames, 2 without mask as most of VOC's JPEGs are) and an SBD tree."""
    root = tmp_path_factory.mktemp("voc")
    voc, sbd = root / "VOC2012", root / "sbd"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    (sbd / "cls").mkdir(parents=True)
    (sbd / "img").mkdir()
    frames = camvid_frames(12)
    expected = {}
    for stem, jpg, mask in frames[:8]:
        shutil.copy(jpg, voc / "JPEGImages" / f"{stem}.jpg")
    for stem, _, mask in frames[:6]:  # VOC's masks: CamVid's void as VOC's 255 border
        values = np.where(mask == CAMVID_VOID, 255, mask)
        save_palette_png(values, voc / "SegmentationClass" / f"{stem}.png")
        expected[stem] = values
    stems = [f[0] for f in frames]
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(stems[:4]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(stems[4:6]) + "\n")
    (voc / "ImageSets/Segmentation/trainval.txt").write_text("\n".join(stems[:6]) + "\n")
    sbd_expected = {}
    # SBD holds frames 0 (also VOC train: VOC's mask wins), 4 (VOC val: left out), 6-7 (images in JPEGImages)
    # and 8-9 (images in SBD's img/ only); its masks carry no border, so void becomes background here.
    for stem, jpg, mask in [frames[0], frames[4], *frames[6:10]]:
        values = np.where(mask == CAMVID_VOID, 0, mask).astype(np.uint8)
        savemat(sbd / "cls" / f"{stem}.mat", {"GTcls": {"Segmentation": values, "Boundaries": np.zeros(1),
                                                        "CategoriesPresent": np.unique(values)}})
        sbd_expected[stem] = values
        if not (voc / "JPEGImages" / f"{stem}.jpg").exists():
            shutil.copy(jpg, sbd / "img" / f"{stem}.jpg")
    (sbd / "train.txt").write_text("\n".join([stems[0], stems[6], stems[8]]) + "\n")
    (sbd / "val.txt").write_text("\n".join([stems[4], stems[7], stems[9]]) + "\n")
    return {"root": voc, "sbd": sbd, "stems": stems, "voc": expected, "sbd_masks": sbd_expected}


def test_voc_takes_its_split_lists_and_masks_with_255_as_ignore(voc, tmp_path, prepare):
    out = tmp_path / "voc"
    for split in ("train", "val"):
        prepare("voc", "--root", voc["root"], "--split", split, "--out", out)
    m = manifest(out)
    assert m["classes"][:3] == ["background", "aeroplane", "bicycle"] and len(m["classes"]) == 21
    assert m["ignore_index"] == 255 and m["palette"][1] == [128, 0, 0]
    stems = voc["stems"]
    for split, listed in (("train", stems[:4]), ("val", stems[4:6])):
        labels = labels_by_key(out, split)
        assert sorted(labels) == sorted(listed)
        for stem in listed:
            assert np.array_equal(labels[stem], voc["voc"][stem])
        assert m["splits"][split]["skipped"] == {}  # JPEGs without a mask are not in any list: not counted
    assert any((voc["voc"][s] == 255).any() for s in stems[:4])


def test_voc_with_sbd_builds_train_aug(voc, tmp_path, prepare):
    out = tmp_path / "aug"
    prepare("voc", "--root", voc["root"], "--split", "train", "--sbd", voc["sbd"], "--out", out)
    labels = labels_by_key(out, "train")
    stems = voc["stems"]
    # (VOC train | SBD train | SBD val) - VOC val
    assert sorted(labels) == sorted({*stems[:4], stems[6], stems[8], stems[7], stems[9]})
    assert np.array_equal(labels[stems[0]], voc["voc"][stems[0]])  # VOC's own mask, with its borders
    assert (voc["voc"][stems[0]] == 255).any() and not np.array_equal(voc["voc"][stems[0]], voc["sbd_masks"][stems[0]])
    for stem in (stems[6], stems[7], stems[8], stems[9]):
        assert np.array_equal(labels[stem], voc["sbd_masks"][stem])
    source = manifest(out)["splits"]["train"]["source"]
    assert source["type"] == "voc" and source["sbd"] == str(voc["sbd"])


def test_voc_refuses_sbd_outside_train_and_names_a_listed_stem_without_mask(voc, tmp_path, prepare, capsys):
    with pytest.raises(SystemExit):
        prepare("voc", "--root", voc["root"], "--split", "val", "--sbd", voc["sbd"], "--out", tmp_path / "a")
    assert "--sbd builds train_aug" in capsys.readouterr().err
    root = tmp_path / "VOC2012"
    shutil.copytree(voc["root"], root)
    unlabelled = voc["stems"][7]  # a JPEG without mask, listed
    (root / "ImageSets/Segmentation/val.txt").write_text(f"{voc['stems'][4]}\n{unlabelled}\n")
    with pytest.raises(SystemExit):
        prepare("voc", "--root", root, "--split", "val", "--out", tmp_path / "b")
    err = capsys.readouterr().err
    assert f"'{unlabelled}'" in err and "val.txt" in err and "has no mask" in err
    assert not (tmp_path / "b").exists()


def test_sbd_bad_mat_and_a_mask_of_another_size_are_skipped_and_named(voc, tmp_path, prepare):
    sbd = tmp_path / "sbd"
    shutil.copytree(voc["sbd"], sbd)
    stems = voc["stems"]
    (sbd / "cls" / f"{stems[8]}.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    savemat(sbd / "cls" / f"{stems[9]}.mat", {"GTcls": {"Segmentation": np.zeros((10, 10), np.uint8)}})
    out = tmp_path / "aug"
    prepare("voc", "--root", voc["root"], "--split", "train", "--sbd", sbd, "--out", out)
    rec = manifest(out)["splits"]["train"]
    assert rec["skipped"] == {"corrupt_mask": 1, "size_mismatch": 1} and rec["samples"] == 6
    details = {key: detail for key, _, detail in rec["skipped_examples"]}
    assert f"{stems[8]}.mat" in details[stems[8]] and f"{stems[9]}.mat is 10x10" in details[stems[9]]


def test_voc_train_aug_shards_are_identical_for_one_and_two_workers(voc, tmp_path, prepare):
    outs = []
    for workers in (1, 2):
        outs.append(tmp_path / f"w{workers}")
        prepare("voc", "--root", voc["root"], "--split", "train", "--sbd", voc["sbd"], "--out", outs[-1],
                "--shard-size", "3", "--workers", workers)
    assert shard_bytes(outs[0]) == shard_bytes(outs[1]) and len(shard_bytes(outs[0])) == 3


# --- ADE20K -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ade(tmp_path_factory) -> dict:
    """ADEChallengeData2016 with CamVid frames: annotations 0 ("other") where CamVid is void, else class + 1."""
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    masks = {}
    for split, offset in (("training", 0), ("validation", 20)):
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True)
        for stem, jpg, mask in camvid_frames(3, offset):
            values = np.where(mask == CAMVID_VOID, 0, mask.astype(np.int64) + 1).astype(np.uint8)
            values[:4, :4] = 150  # the last class
            shutil.copy(jpg, root / "images" / split / f"ADE_{stem}.jpg")
            Image.fromarray(values).save(root / "annotations" / split / f"ADE_{stem}.png")
            masks[f"ADE_{stem}"] = values
    return {"root": root, "masks": masks}


def test_ade20k_reduces_the_zero_label(ade, tmp_path, prepare):
    out = tmp_path / "ade"
    for split in ("train", "val"):
        prepare("ade20k", "--root", ade["root"], "--split", split, "--out", out)
    m = manifest(out)
    assert len(m["classes"]) == 150 and m["classes"][0] == "wall" and m["classes"][149] == "flag"
    for split in ("train", "val"):
        labels = labels_by_key(out, split)
        assert len(labels) == 3
        for key, label in labels.items():
            source = ade["masks"][key]
            expected = np.where(source == 0, 255, source.astype(np.int64) - 1)
            assert np.array_equal(label, expected) and (label == 255).any() and (label == 149).any()


def test_ade20k_refuses_a_value_past_150_naming_the_file(ade, tmp_path, prepare, capsys):
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade["root"], root)
    bad = sorted((root / "annotations/validation").glob("*.png"))[0]
    values = np.asarray(Image.open(bad)).copy()
    values[0, 0] = 151
    Image.fromarray(values).save(bad)
    with pytest.raises(SystemExit):
        prepare("ade20k", "--root", root, "--split", "val", "--out", tmp_path / "out")
    assert f"{bad.name}: mask values [151] are outside the class range 1..150 (--reduce-zero-label)" \
        in capsys.readouterr().err


# --- the folder source's options ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """CamVid frames in nested sequence folders, as many datasets ship them; one frame name in two folders."""
    root = tmp_path_factory.mktemp("nested")
    masks = {}
    for sequence, offset in (("seq_a", 0), ("seq_b", 3)):
        for kind in ("images", "masks"):
            (root / kind / sequence).mkdir(parents=True)
        for i, (stem, jpg, mask) in enumerate(camvid_frames(3, offset)):
            name = "frame0" if i == 0 else stem  # the same file name in both sequences
            shutil.copy(jpg, root / "images" / sequence / f"{name}.jpg")
            Image.fromarray(mask).save(root / "masks" / sequence / f"{name}.png")
            masks[f"{sequence}/{name}"] = mask
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(11)) + "\n\n")
    return {"root": root, "masks": masks}


def test_folder_recursive_pairs_by_relative_path_and_keeps_keys_unique(folders, tmp_path, prepare):
    out = tmp_path / "out"
    prepare("folder", "--images", folders["root"] / "images", "--masks", folders["root"] / "masks", "--recursive",
            "--classes", f"@{folders['root'] / 'classes.txt'}", "--source-ignore", CAMVID_VOID, "--out", out)
    labels = labels_by_key(out, "train")
    assert sorted(labels) == sorted(rel.replace("/", "__") for rel in folders["masks"])
    assert {"seq_a__frame0", "seq_b__frame0"} <= set(labels)
    for rel, mask in folders["masks"].items():
        assert np.array_equal(labels[rel.replace("/", "__")], np.where(mask == CAMVID_VOID, 255, mask))
    assert manifest(out)["classes"] == [f"c{i}" for i in range(11)]


def test_folder_list_takes_only_its_stems_and_names_a_missing_one(folders, tmp_path, prepare, capsys):
    listed = ["seq_a/frame0", sorted(folders["masks"])[-1]]
    (tmp_path / "val.txt").write_text("# the val frames\n" + "\n".join(listed) + "\n")
    out = tmp_path / "out"
    args = ("folder", "--images", folders["root"] / "images", "--masks", folders["root"] / "masks", "--recursive",
            "--classes", ",".join(f"c{i}" for i in range(11)), "--source-ignore", CAMVID_VOID, "--split", "val")
    prepare(*args, "--list", tmp_path / "val.txt", "--out", out)
    assert sorted(labels_by_key(out, "val")) == sorted(s.replace("/", "__") for s in listed)
    assert manifest(out)["splits"]["val"]["skipped"] == {}
    (tmp_path / "bad.txt").write_text("seq_a/frame0\nseq_a/nowhere\n")
    with pytest.raises(SystemExit):
        prepare(*args, "--list", tmp_path / "bad.txt", "--out", tmp_path / "bad")
    assert "bad.txt: 'seq_a/nowhere' has no image and mask file" in capsys.readouterr().err


def test_folder_reduce_zero_label_map_and_several_ignore_values(folders, tmp_path, prepare, capsys):
    images, masks = folders["root"] / "images/seq_a", folders["root"] / "masks/seq_a"
    some = {k.split("/")[1]: v for k, v in folders["masks"].items() if k.startswith("seq_a/")}
    out = tmp_path / "reduced"
    prepare("folder", "--images", images, "--masks", masks, "--classes", ",".join(f"c{i}" for i in range(11)),
            "--reduce-zero-label", "--out", out)
    for key, label in labels_by_key(out, "train").items():  # CamVid's 0 (sky) -> ignore, 11 (void) -> 10
        assert np.array_equal(label, np.where(some[key] == 0, 255, some[key].astype(np.int64) - 1))

    value_map = tmp_path / "map.json"
    value_map.write_text(json.dumps({"0": "sky", "3": "road", "4": "road", "8": 2, "1": "ignore", "2": "ignore",
                                     "5": "ignore", "6": "ignore", "7": "ignore", "9": "ignore", "10": "ignore",
                                     "11": "ignore"}))
    out = tmp_path / "mapped"
    prepare("folder", "--images", images, "--masks", masks, "--classes", "sky,road,car", "--map", value_map,
            "--out", out)
    lut = np.array([0, 255, 255, 1, 1, 255, 255, 255, 2, 255, 255, 255])
    for key, label in labels_by_key(out, "train").items():
        assert np.array_equal(label, lut[some[key]])
    assert manifest(out)["splits"]["train"]["source"]["map"][:2] == [[0, 0], [1, 255]]

    value_map.write_text(json.dumps({"0": "sky", "3": "road"}))
    with pytest.raises(SystemExit):
        prepare("folder", "--images", images, "--masks", masks, "--classes", "sky,road,car", "--map", value_map,
                "--out", tmp_path / "unmapped")
    assert "are not in the --map file" in capsys.readouterr().err

    out = tmp_path / "two_ignores"
    prepare("folder", "--images", images, "--masks", masks, "--classes", ",".join(f"c{i}" for i in range(11)),
            "--source-ignore", "11", "--source-ignore", "0", "--out", out)
    for key, label in labels_by_key(out, "train").items():
        assert np.array_equal(label, np.where(np.isin(some[key], [0, 11]), 255, some[key]))


# --- Cityscapes coarse, COCO crowd exports --------------------------------------------------------------------------

def test_cityscapes_train_extra_with_coarse_labels(tmp_path, prepare, capsys):
    sample = shared_data("cityscapes-sample")
    frame = "frankfurt_000000_000294"
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit/train_extra/frankfurt").mkdir(parents=True)
    (root / "gtCoarse/train_extra/frankfurt").mkdir(parents=True)
    shutil.copy(sample / f"leftImg8bit/val/frankfurt/{frame}_leftImg8bit.png",
                root / f"leftImg8bit/train_extra/frankfurt/{frame}_leftImg8bit.png")
    label_ids = np.asarray(Image.open(sample / f"gtFine/val/frankfurt/{frame}_gtFine_labelIds.png")).copy()
    label_ids[::7] = 0  # coarse labels leave much unlabelled (labelId 0)
    Image.fromarray(label_ids).save(root / f"gtCoarse/train_extra/frankfurt/{frame}_gtCoarse_labelIds.png")
    with pytest.raises(SystemExit):
        prepare("cityscapes", "--root", root, "--split", "train_extra", "--out", tmp_path / "fine")
    assert "pass --annotations gtCoarse" in capsys.readouterr().err
    out = tmp_path / "coarse"
    prepare("cityscapes", "--root", root, "--split", "train_extra", "--annotations", "gtCoarse", "--out", out)
    from test_prepare_sources import OFFICIAL_TRAIN_IDS

    expected = np.full_like(label_ids, 255)
    for label_id, train_id in OFFICIAL_TRAIN_IDS.items():
        expected[label_ids == label_id] = train_id
    (sample_out,) = read_shards(out, "train_extra")
    assert np.array_equal(sample_out["label"], expected) and (expected[::7] == 255).all()


def test_coco_warns_when_crowd_regions_hold_most_labelled_area(tmp_path, prepare, capsys):
    """CVAT's COCO export stores brush masks as crowd RLE: --crowd ignore would silently make them ignore."""
    images = [{"id": i, "width": 40, "height": 30} for i in (1, 2)]
    rle = {"size": [30, 40], "counts": [300, 600, 300]}  # columns 10..29 of every row: 600 pixels
    annotations = [{"image_id": 1, "category_id": 1, "segmentation": square(2, 2, 12, 12), "area": 100.0},
                   {"image_id": 2, "category_id": 1, "segmentation": rle, "iscrowd": 1, "area": 600.0}]
    image_dir, ann_file = write_coco(tmp_path / "cvat", images, annotations)
    out = tmp_path / "ignored"
    prepare("coco", "--images", image_dir, "--annotations", ann_file, "--classes", "person", "--out", out)
    printed = capsys.readouterr().out
    assert "crowd (iscrowd=1) regions are 86% of the selected classes' annotated area" in printed
    assert "pass --crowd label" in printed
    assert manifest(out)["splits"]["train"]["source"]["crowd_share"] == pytest.approx(600 / 700, abs=1e-4)
    out = tmp_path / "labelled"
    prepare("coco", "--images", image_dir, "--annotations", ann_file, "--classes", "person", "--crowd", "label",
            "--out", out)
    assert "WARNING" not in capsys.readouterr().out
    labels = labels_by_key(out, "train")
    assert (labels["000002"] == 1).sum() == 600
