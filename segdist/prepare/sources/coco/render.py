"""COCO instance annotations -> one semantic label map per image, for a chosen class subset.

Label = position of the class in `classes` (0 = background). Each class's pixels come from
its instances decoded with pycocotools (polygons, uncompressed and compressed RLE).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import IGNORE_INDEX, label_dtype
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS, Sample, SkipSample, decoder_errors, read_image
from segdist.prepare.locations import input_name

# How pixels claimed by several instances are labelled (see render_label).
OVERLAP_POLICIES = ("area", "order", "ignore", "ignore-between-classes")
CROWD_MODES = ("ignore", "label")


@dataclass(frozen=True)
class Instance:
    """One annotation of a selected class, already validated."""

    ann_id: int
    label: int
    iscrowd: bool
    segmentation: list | dict
    bbox: tuple[float, float, float, float]


@dataclass
class CocoSpec:
    """Everything a worker needs to convert one image."""

    key: str
    path: str
    image_id: int
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # degenerate polygons left out, by reason
    broken: list[str] = field(default_factory=list)  # annotations that cannot be drawn: the image is skipped


@dataclass(frozen=True)
class CocoOptions:
    num_classes: int
    overlap: str = "area"
    crowd: str = "ignore"
    ignore_index: int = IGNORE_INDEX
    max_pixels: int = DEFAULT_MAX_PIXELS


def _rle(segmentation: list | dict, height: int, width: int) -> dict:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def render_label(spec: CocoSpec, opts: CocoOptions) -> np.ndarray:
    """Paint the label map of one image following the overlap and crowd policies.

    Overlaps: "area" paints larger instances first (smaller ones stay visible); "order" paints
    class by class in --classes order (the later class wins); "ignore" is torchvision's
    reference (ConvertCocoPolysToMask): every pixel covered by two or more instances, of any
    classes, is the ignore index; "ignore-between-classes" ignores only pixels claimed by two
    different classes. Crowd regions are then the ignore index (--crowd ignore), or take part
    as ordinary instances (--crowd label).
    """
    from pycocotools import mask as mask_utils

    h, w = spec.height, spec.width
    label = np.zeros((h, w), dtype=label_dtype(opts.num_classes, opts.ignore_index))
    regular = [i for i in spec.instances if not i.iscrowd or opts.crowd == "label"]
    crowd = [i for i in spec.instances if i.iscrowd and opts.crowd == "ignore"]
    rles = {id(i): _rle(i.segmentation, h, w) for i in spec.instances}

    if opts.overlap == "area":
        areas = {id(i): float(mask_utils.area(rles[id(i)])) for i in regular}
        for inst in sorted(regular, key=lambda i: (-areas[id(i)], i.ann_id)):
            _paint(label, MaskRegion(rles[id(inst)]), inst.label)
    elif opts.overlap == "ignore":
        _paint_ignoring_overlaps(label, ((i.label, MaskRegion(rles[id(i)])) for i in regular), opts.ignore_index)
    else:
        by_class = [(c, [rles[id(i)] for i in regular if i.label == c]) for c in range(1, opts.num_classes)]
        masks = ((c, MaskRegion(mask_utils.merge(members))) for c, members in by_class if members)
        if opts.overlap == "order":
            for cls, region in masks:
                _paint(label, region, cls)
        else:
            _paint_ignoring_overlaps(label, masks, opts.ignore_index)
    if crowd:
        _paint(label, MaskRegion(mask_utils.merge([rles[id(i)] for i in crowd])), opts.ignore_index)
    return label


class MaskRegion:
    """A decoded instance mask and the box holding its pixels (painting touches only that box)."""

    def __init__(self, rle: dict):
        from pycocotools import mask as mask_utils

        self.mask = mask_utils.decode(rle).view(bool)  # column-major, full image size
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))  # exact pixel box; zeros when empty
        self.box = (slice(y, y + h), slice(x, x + w))

    def pixels(self) -> np.ndarray:
        return self.mask[self.box]


def _paint(label: np.ndarray, region: MaskRegion, value: int) -> None:
    label[region.box][region.pixels()] = value


def _paint_ignoring_overlaps(label: np.ndarray, masks: Iterator[tuple[int, MaskRegion]], ignore_index: int) -> None:
    """Each mask's pixels get its class; pixels covered by two or more masks get the ignore index."""
    covered = np.zeros(label.shape, bool)
    overlap = np.zeros(label.shape, bool)
    for cls, region in masks:
        pixels = region.pixels()
        overlap[region.box] |= covered[region.box] & pixels
        covered[region.box] |= pixels
        label[region.box][pixels] = cls
    label[overlap] = ignore_index


def convert(spec: CocoSpec, opts: CocoOptions) -> Sample:
    """Worker side: read and check the image, paint its label map."""
    if spec.broken:
        raise SkipSample("bad_annotation", f"{spec.path}: " + "; ".join(spec.broken[:3]))
    image = read_image(spec.path, (spec.width, spec.height), opts.max_pixels)
    with decoder_errors("corrupt_annotation", f"{spec.path} (annotations of image id {spec.image_id})"):
        label = render_label(spec, opts)
    boxes = [
        [inst.label, *(round(v, 2) for v in inst.bbox)] for inst in spec.instances if not inst.iscrowd
    ]
    meta = {"source": "coco", "id": spec.image_id, "file": input_name(spec.path), "boxes": boxes}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)


def split_by_ratio(specs: list, ratios: dict[str, float], seed: int) -> dict[str, list]:
    """Seeded, reproducible ratio split; each split keeps the input order."""
    total = sum(ratios.values())
    if any(not 0 <= r <= 1 for r in ratios.values()) or abs(total - 1.0) > 1e-6:
        raise DataError(f"--splits ratios must be between 0 and 1 and sum to 1, got {ratios}")
    order = np.random.default_rng(seed).permutation(len(specs))
    bounds = np.round(np.cumsum(list(ratios.values())) * len(specs)).astype(int)
    out, start = {}, 0
    for name, end in zip(ratios, bounds):
        out[name] = [specs[i] for i in sorted(order[start:end])]
        start = end
    return out
