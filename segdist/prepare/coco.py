"""COCO instance annotations -> one semantic label map per image, for a chosen class subset.

Label = position of the class in `classes` (0 = background). Each class's pixels come from
its instances decoded with pycocotools (polygons, uncompressed and compressed RLE).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import IGNORE_INDEX, label_dtype
from segdist.prepare.coco_json import SEGMENTATION_PROBLEMS, clean_segmentation
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS, Sample, SkipSample, decoder_errors, read_image, safe_key

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


@dataclass
class Annotated:
    """The selected classes' annotations of a file, grouped by image id, and what could not be used."""

    instances: dict[int, list[Instance]] = field(default_factory=lambda: defaultdict(list))
    dropped: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))  # degenerate polygons
    broken: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))  # annotations not drawable
    orphans: Counter = field(default_factory=Counter)  # annotations of an image the file does not list


def build_specs(data: dict, image_dir: Path, classes: list[dict], *, crowd: str, keep_empty: bool,
                per_class: int | None, seed: int) -> tuple[list[CocoSpec], Counter]:
    """Select the images to convert (sorted by image id); also count annotations of unknown images."""
    images = {img["id"]: img for img in data["images"]}
    found = group_annotations(data["annotations"], images, {c["id"]: i + 1 for i, c in enumerate(classes)})
    image_ids = select_images(found, images, len(classes), crowd=crowd, keep_empty=keep_empty, per_class=per_class,
                              seed=seed)
    specs = [CocoSpec(key=safe_key(str(Path(images[i]["file_name"]).with_suffix(""))),
                      path=str(image_dir / images[i]["file_name"]), image_id=i, width=images[i]["width"],
                      height=images[i]["height"],
                      instances=sorted(found.instances.get(i, []), key=lambda inst: inst.ann_id),
                      dropped=dict(found.dropped.get(i, {})), broken=found.broken.get(i, []))
             for i in image_ids]
    return specs, found.orphans


def group_annotations(annotations: list[dict], images: dict[int, dict], label_of: dict[int, int]) -> Annotated:
    """The annotations of the selected categories (`label_of`: category id -> label), checked, by image."""
    found = Annotated()
    for ann in annotations:
        label = label_of.get(ann["category_id"])
        if label is None:
            continue
        img = images.get(ann["image_id"])
        if img is None:
            found.orphans["annotation_without_image"] += 1
            continue
        seg, problem = clean_segmentation(ann["segmentation"], img["height"], img["width"])
        if problem == "degenerate_polygon":  # no area: nothing of the image is lost
            found.dropped[img["id"]][problem] += 1
            continue
        if problem:  # an object or crowd region that cannot be drawn: the image's label would be wrong
            found.broken[img["id"]].append(f"annotation {ann.get('id', '?')}: {SEGMENTATION_PROBLEMS[problem]}")
            continue
        bbox = tuple(float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
        found.instances[img["id"]].append(Instance(ann.get("id", 0), label, bool(ann.get("iscrowd", 0)), seg, bbox))
    return found


def select_images(found: Annotated, images: dict[int, dict], num_classes: int, *, crowd: str, keep_empty: bool,
                  per_class: int | None, seed: int) -> list[int]:
    """The image ids to convert, sorted: those with a labelled instance (or all with `keep_empty`), or a
    seeded draw of at most `per_class` images per class."""
    def labelled(image_id: int, label: int | None = None) -> bool:
        return any((not inst.iscrowd or crowd == "label") and (label is None or inst.label == label)
                   for inst in found.instances.get(image_id, ()))

    if per_class is None:
        return sorted(i for i in images if keep_empty or labelled(i) or i in found.broken)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in range(1, num_classes + 1):
        candidates = sorted(i for i in found.instances if labelled(i, label))
        chosen.update(int(i) for i in rng.permutation(candidates)[:per_class])
    return sorted(chosen)


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
    image = read_image(Path(spec.path), (spec.width, spec.height), opts.max_pixels)
    with decoder_errors("corrupt_annotation", f"{spec.path} (annotations of image id {spec.image_id})"):
        label = render_label(spec, opts)
    boxes = [
        [inst.label, *(round(v, 2) for v in inst.bbox)] for inst in spec.instances if not inst.iscrowd
    ]
    meta = {"source": "coco", "id": spec.image_id, "file": Path(spec.path).name, "boxes": boxes}
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
