"""The resume fingerprint: every `prepare` option that changes the output changes it, and nothing else does.

The options are read from the argparse parser itself, so an option added later without an
entry here fails `test_every_option_of_every_source_is_covered`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from segdist.cli import build_parser, prepare_job
from segdist.prepare.fingerprint import fingerprint
from segdist.synth.cityscapes import write_synthetic_cityscapes
from segdist.synth.coco import write_synthetic_coco

FLAG = object()  # a store_true option: present or not

# option -> (value in the changed run or FLAG, whether the output changes, extra arguments of both runs)
COMMON = {
    "--out": None,  # where the dataset goes, not what it holds (the fingerprint is kept inside it)
    "--workers": ("1", False, ()),
    "--address": ("127.0.0.1:6379", False, ()),
    "--overwrite": (FLAG, False, ()),
    "--work-dir": ("{root}/work", False, ()),  # where an s3:// --out is converted before upload
    "--shard-size": ("3", True, ()),
    "--shard-bytes": ("64KB", True, ()),
    "--ignore-index": ("200", True, ()),
    "--max-pixels": ("1000", True, ()),
}
SOURCES = {
    "coco": {
        "--images": ("{root}/coco_images_copy", True, ()),
        "--annotations": ("{root}/coco_moved.json", True, ()),
        "--classes": ("person,car", True, ()),
        "--split": ("val", True, ()),
        "--splits": ("train=0.5,val=0.5", True, ()),
        "--per-class": ("1", True, ()),
        "--seed": ("7", True, ("--per-class", "2")),
        "--overlap": ("ignore", True, ()),
        "--crowd": ("label", True, ()),
        "--keep-empty": (FLAG, True, ()),
    },
    "cityscapes": {
        "--root": ("{root}/cityscapes_copy", True, ()),
        "--split": ("val", True, ()),
        "--image-format": ("jpeg", True, ()),
        "--annotations": ("gtCoarse", True, ()),
    },
    "voc": {
        "--root": ("{root}/voc_copy", True, ()),
        "--split": ("val", True, ()),
        "--sbd": ("{root}/sbd", True, ()),
    },
    "ade20k": {
        "--root": ("{root}/ade_copy", True, ()),
        "--split": ("val", True, ()),
    },
    "folder": {
        "--images": ("{root}/folder_images_copy", True, ()),
        "--masks": ("{root}/folder_masks_copy", True, ()),
        "--classes": ("a,b,c,d", True, ()),
        "--split": ("val", True, ()),
        "--source-ignore": ("2", True, ()),
        "--unknown-to-ignore": (FLAG, True, ()),
        "--palette": ("{root}/palette.json", True, ()),
        "--mask-suffix": ("_m", True, ()),
        "--list": ("{root}/stems.txt", True, ()),
        "--recursive": (FLAG, True, ()),  # the fixture's folders hold a subfolder
        "--reduce-zero-label": (FLAG, True, ()),
        "--map": ("{root}/map.json", True, ()),
    },
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One small dataset per source, plus copies and variants the changed runs point at."""
    root = tmp_path_factory.mktemp("fingerprint")
    write_synthetic_coco(root / "coco", images=6, val_images=1, seed=1, width=64, height=48)
    shutil.copytree(root / "coco" / "train", root / "coco_images_copy")
    data = json.loads((root / "coco/annotations/instances_train.json").read_text())
    polygon = next(a for a in data["annotations"] if isinstance(a["segmentation"], list))["segmentation"][0]
    polygon[0] += 1  # same images and keys, one vertex moved
    (root / "coco_moved.json").write_text(json.dumps(data))

    write_synthetic_cityscapes(root / "cityscapes", images=2, val_images=1, seed=1, width=64, height=32)
    shutil.copytree(root / "cityscapes", root / "cityscapes_copy")

    rng = np.random.default_rng(0)
    for name in ("folder_images/sub", "folder_masks/sub"):
        (root / name).mkdir(parents=True)
    for stem in ("f0", "f1", "f2", "f3", "sub/f4"):
        Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)).save(root / f"folder_images/{stem}.png")
        for suffix in ("", "_m"):
            Image.fromarray(rng.integers(0, 3, (8, 12), dtype=np.uint8)).save(root / f"folder_masks/{stem}{suffix}.png")
    shutil.copytree(root / "folder_images", root / "folder_images_copy")
    shutil.copytree(root / "folder_masks", root / "folder_masks_copy")
    (root / "palette.json").write_text(json.dumps([[0, 0, 0], [255, 0, 0], [0, 255, 0]]))
    (root / "stems.txt").write_text("f0\nf2\n")
    (root / "map.json").write_text(json.dumps({"0": "a", "1": "c", "2": "ignore"}))
    _write_voc(root, rng)
    _write_ade(root, rng)
    return root


def _write_voc(root, rng) -> None:
    from scipy.io import savemat

    voc = root / "voc"
    for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / name).mkdir(parents=True)
    for stem in ("a", "b", "c", "d"):
        Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)).save(voc / f"JPEGImages/{stem}.jpg")
    for stem in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 21, (8, 12), dtype=np.uint8), "P").save(voc / f"SegmentationClass/{stem}.png")
    for split, stems in (("train", "a\nb\n"), ("val", "c\n"), ("trainval", "a\nb\nc\n")):
        (voc / f"ImageSets/Segmentation/{split}.txt").write_text(stems)
    shutil.copytree(voc, root / "voc_copy")
    (root / "sbd/cls").mkdir(parents=True)
    savemat(root / "sbd/cls/d.mat", {"GTcls": {"Segmentation": rng.integers(0, 21, (8, 12), dtype=np.uint8)}})
    (root / "sbd/train.txt").write_text("d\n")
    (root / "sbd/val.txt").write_text("c\n")


def _write_ade(root, rng) -> None:
    for split in ("training", "validation"):
        for kind in ("images", "annotations"):
            (root / "ade" / kind / split).mkdir(parents=True)
        for stem in ("ADE_1", "ADE_2"):
            image = rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)
            values = rng.integers(0, 151, (8, 12), dtype=np.uint8)
            Image.fromarray(image).save(root / f"ade/images/{split}/{stem}.jpg")
            Image.fromarray(values).save(root / f"ade/annotations/{split}/{stem}.png")
    shutil.copytree(root / "ade", root / "ade_copy")


def _base_args(source: str, root) -> list[str]:
    return {
        "coco": ["--images", f"{root}/coco/train", "--annotations", f"{root}/coco/annotations/instances_train.json",
                 "--classes", "person,bicycle,car"],
        "cityscapes": ["--root", f"{root}/cityscapes", "--split", "train"],
        "folder": ["--images", f"{root}/folder_images", "--masks", f"{root}/folder_masks", "--classes", "a,b,c"],
        "voc": ["--root", f"{root}/voc", "--split", "train"],
        "ade20k": ["--root", f"{root}/ade", "--split", "train"],
    }[source] + ["--out", f"{root}/out"]


def _fingerprint(source: str, argv: list[str]) -> str:
    job = prepare_job(build_parser().parse_args(["prepare", source, *argv]))
    return fingerprint(job, next(iter(job.splits)))


def _with(argv: list[str], option: str, value: object) -> list[str]:
    """`argv` with `option` set to `value` (replacing an earlier value of it)."""
    if option in argv:
        i = argv.index(option)
        argv = argv[:i] + argv[i + 2 :]
    return argv + ([option] if value is FLAG else [option, value])


def _source_options(source: str) -> set[str]:
    prepare = next(a for a in build_parser()._actions if a.dest == "command").choices["prepare"]
    parser = next(a for a in prepare._actions if a.dest == "source").choices[source]
    return {action.option_strings[0] for action in parser._actions if action.dest != "help"}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_option_of_every_source_is_covered(source):
    assert _source_options(source) == set(COMMON) | set(SOURCES[source])


@pytest.mark.parametrize("source,option", [(s, o) for s in sorted(SOURCES) for o in sorted({**COMMON, **SOURCES[s]})
                                           if {**COMMON, **SOURCES[s]}[o] is not None])
def test_an_option_changes_the_fingerprint_exactly_when_it_changes_the_output(inputs, source, option):
    value, changes_output, extra = {**COMMON, **SOURCES[source]}[option]
    base = _base_args(source, inputs) + list(extra)
    changed = _with(base, option, value if value is FLAG else value.format(root=inputs))
    assert (_fingerprint(source, base) != _fingerprint(source, changed)) == changes_output


def test_the_fingerprint_covers_annotation_content_not_just_keys(inputs, tmp_path):
    ann = tmp_path / "instances.json"
    shutil.copy(inputs / "coco/annotations/instances_train.json", ann)
    argv = ["--images", f"{inputs}/coco/train", "--annotations", str(ann), "--classes", "person,bicycle,car",
            "--out", str(tmp_path / "out")]
    before = _fingerprint("coco", argv)
    assert _fingerprint("coco", argv) == before  # stable
    shutil.copy(inputs / "coco_moved.json", ann)  # same file name, same images, one vertex moved
    assert _fingerprint("coco", argv) != before
