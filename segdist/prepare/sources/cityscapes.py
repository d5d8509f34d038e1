"""Cityscapes folders (leftImg8bit + gtFine or gtCoarse labelIds) -> the 19 official train classes.

Every labelId whose trainId is 255 (not one of the 19) becomes the chosen ignore index.
`train_extra` (19,998 frames) has coarse labels only: `--split train_extra --annotations gtCoarse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from segdist.errors import DataError
from segdist.format.cityscapes_labels import CLASSES, PALETTE, label_id_to_train_id
from segdist.format.manifest import IGNORE_INDEX
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS, Sample, SkipSample, decoder_errors, read_image, read_mask
from segdist.prepare.jobs import PrepareJob, label_options


@dataclass
class CityscapesSpec:
    key: str
    image_path: str
    label_path: str


@dataclass(frozen=True)
class CityscapesOptions:
    image_format: str = "png"  # "png" keeps the original bytes; "jpeg" transcodes
    ignore_index: int = IGNORE_INDEX
    max_pixels: int = DEFAULT_MAX_PIXELS


def job(root: str | Path, split: str, *, annotations: str = "gtFine", image_format: str = "png",
        ignore_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256,
        shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare cityscapes` will write: a split's frames, labelIds mapped to the 19 trainIds."""
    if split == "train_extra" and annotations != "gtCoarse":
        raise DataError("--split train_extra has coarse labels only: pass --annotations gtCoarse")
    specs = build_specs(Path(root).resolve(), split, annotations)
    if not specs:
        raise DataError(f"{Path(root) / 'leftImg8bit' / split}: nothing selected: no */*_leftImg8bit.png frames")
    opts = CityscapesOptions(image_format=image_format, **label_options(len(CLASSES), ignore_index, max_pixels))
    source = {"type": "cityscapes", "root": str(root), "split": split, "annotations": annotations,
              "image_format": image_format, "max_pixels": opts.max_pixels}
    return PrepareJob({split: specs}, partial(convert, opts=opts), CLASSES, PALETTE, opts.ignore_index,
                      source, shard_size, shard_bytes)


def build_specs(root: Path, split: str, annotations: str = "gtFine") -> list[CityscapesSpec]:
    """All frames of a split, sorted by city and frame name, with their `annotations` (gtFine, gtCoarse) labelIds."""
    image_root = root / "leftImg8bit" / split
    if not image_root.is_dir():
        raise DataError(f"{image_root} does not exist (expected the Cityscapes leftImg8bit/{split} folder)")
    specs = []
    for image_path in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image_path.name[: -len("_leftImg8bit.png")]
        label_path = root / annotations / split / image_path.parent.name / f"{stem}_{annotations}_labelIds.png"
        specs.append(CityscapesSpec(stem, str(image_path), str(label_path)))
    return specs


def convert(spec: CityscapesSpec, opts: CityscapesOptions) -> Sample:
    """Worker side: read the frame and map its labelIds to trainIds."""
    image = read_image(Path(spec.image_path), max_pixels=opts.max_pixels)
    mask = read_mask(Path(spec.label_path), opts.max_pixels, kind="label")
    label_ids = mask.values
    if mask.mode not in ("L", "P"):
        raise SkipSample("bad_label", f"{spec.label_path} is a PIL mode {mask.mode} image, not a single-channel "
                                      "8-bit labelIds map")
    if label_ids.shape != (image.height, image.width):
        height, width = label_ids.shape
        raise SkipSample("size_mismatch",
                         f"{spec.label_path} is {width}x{height}, its image {image.width}x{image.height}")
    data, ext = image.data, image.ext
    if opts.image_format == "jpeg":
        with decoder_errors("corrupt_image", spec.image_path):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            data, ext = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), "jpg"
    label = label_id_to_train_id(opts.ignore_index)[label_ids]
    meta = {"source": "cityscapes", "id": spec.key, "file": Path(spec.image_path).name}
    return Sample(spec.key, data, ext, image.mean, image.std, label, meta)
