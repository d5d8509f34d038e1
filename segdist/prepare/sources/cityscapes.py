"""Cityscapes folders (leftImg8bit + gtFine or gtCoarse labelIds) -> the 19 official train classes.

Every labelId whose trainId is 255 (not one of the 19) becomes the chosen ignore index.
`train_extra` (19,998 frames) has coarse labels only: `--split train_extra --annotations gtCoarse`.
`--root` may be an s3:// prefix: its leftImg8bit/<split> listed on the driver, each frame read by its task.
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
from segdist.prepare.inputs import (DEFAULT_MAX_PIXELS, InputPath, Sample, SkipSample, decoder_errors, read_image,
                                    read_mask)
from segdist.prepare.jobs import PrepareJob, label_options
from segdist.prepare.locations import Listings, input_name, input_url, is_remote, resolve


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
    listings = Listings()
    specs = build_specs(resolve(root), split, annotations, listings)
    if not specs:
        raise DataError(f"{input_url(root, f'leftImg8bit/{split}')}: nothing selected: no */*_leftImg8bit.png frames")
    opts = CityscapesOptions(image_format=image_format, **label_options(len(CLASSES), ignore_index, max_pixels))
    source = {"type": "cityscapes", "root": str(root), "split": split, "annotations": annotations,
              "image_format": image_format, "max_pixels": opts.max_pixels, **listings.record()}
    return PrepareJob({split: specs}, partial(convert, opts=opts), CLASSES, PALETTE, opts.ignore_index,
                      source, shard_size, shard_bytes)


def build_specs(root: InputPath, split: str, annotations: str = "gtFine",
                listings: Listings | None = None) -> list[CityscapesSpec]:
    """All frames of a split, sorted by city and frame name, with their `annotations` (gtFine, gtCoarse) labelIds."""
    listings = listings or Listings()
    image_root = input_url(root, f"leftImg8bit/{split}")
    if not is_remote(root) and not Path(image_root).is_dir():
        raise DataError(f"{image_root} does not exist (expected the Cityscapes leftImg8bit/{split} folder)")
    if is_remote(root):
        listings.files(input_url(root, f"{annotations}/{split}"), recursive=True)  # their sizes and ETags: resume
    specs = []
    for name, image_path in listings.files(image_root, recursive=True).items():
        city, _, file = name.partition("/")
        if "/" in file or not file.endswith("_leftImg8bit.png"):
            continue
        stem = file[: -len("_leftImg8bit.png")]
        label_path = input_url(root, f"{annotations}/{split}/{city}/{stem}_{annotations}_labelIds.png")
        specs.append(CityscapesSpec(stem, image_path, label_path))
    return specs


def convert(spec: CityscapesSpec, opts: CityscapesOptions) -> Sample:
    """Worker side: read the frame and map its labelIds to trainIds."""
    image = read_image(spec.image_path, max_pixels=opts.max_pixels)
    mask = read_mask(spec.label_path, opts.max_pixels, kind="label")
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
    meta = {"source": "cityscapes", "id": spec.key, "file": input_name(spec.image_path)}
    return Sample(spec.key, data, ext, image.mean, image.std, label, meta)
