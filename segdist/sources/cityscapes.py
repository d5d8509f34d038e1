"""Cityscapes folders (leftImg8bit + gtFine labelIds) -> the 19 official train classes.

Every labelId whose trainId is 255 (not one of the 19) becomes the chosen ignore index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segdist.sources.common import (
    DEFAULT_MAX_PIXELS,
    IGNORE_INDEX,
    DataError,
    Sample,
    SkipSample,
    decoder_errors,
    label_dtype,
    read_image,
    read_mask,
)

# (name, labelId, trainId, colour) from cityscapesScripts' labels.py; trainId 255 = ignored.
LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)
TRAIN_LABELS = sorted((t, name, colour) for name, _, t, colour in LABELS if t != 255)
CLASSES = [name for _, name, _ in TRAIN_LABELS]
PALETTE = [list(colour) for _, _, colour in TRAIN_LABELS]


def label_id_to_train_id(ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """256-entry lookup table: labelId -> trainId, everything else -> the ignore index."""
    lut = np.full(256, ignore_index, dtype=label_dtype(len(CLASSES), ignore_index))
    for _, label_id, train_id, _ in LABELS:
        if train_id != 255:
            lut[label_id] = train_id
    return lut


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


def build_specs(root: Path, split: str) -> list[CityscapesSpec]:
    """All frames of a split, sorted by city and frame name."""
    image_root = root / "leftImg8bit" / split
    if not image_root.is_dir():
        raise DataError(f"{image_root} does not exist (expected the Cityscapes leftImg8bit/{split} folder)")
    specs = []
    for image_path in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image_path.name[: -len("_leftImg8bit.png")]
        label_path = root / "gtFine" / split / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
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
