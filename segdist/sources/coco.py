"""COCO instance annotations -> one semantic label map per image, for a chosen class subset.

Label = position of the class in `classes` (0 = background). Each class's pixels come from
its instances decoded with pycocotools (polygons, uncompressed and compressed RLE).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    safe_key,
)

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


def load_annotations(path: Path) -> dict:
    """Load a COCO instances JSON and check its structure: the file, entry and key named on error."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    check_structure(data, path)
    return data


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not float


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


# section -> (key, required, check, what the check wants)
_FIELDS: dict[str, tuple[tuple[str, bool, Callable[[object], bool], str], ...]] = {
    "images": (
        ("id", True, _is_int, "an integer"),
        ("file_name", True, lambda v: isinstance(v, str) and Path(v).name not in ("", ".", ".."), "a file name"),
        ("width", True, lambda v: _is_int(v) and v > 0, "a positive integer"),
        ("height", True, lambda v: _is_int(v) and v > 0, "a positive integer"),
    ),
    "annotations": (
        ("image_id", True, _is_int, "an integer"),
        ("category_id", True, _is_int, "an integer"),
        ("segmentation", True, lambda v: True, ""),  # its content is checked per annotation (clean_segmentation)
        ("id", False, _is_int, "an integer"),
        ("iscrowd", False, lambda v: v in (0, 1) and type(v) in (int, bool), "0 or 1"),
        ("bbox", False, lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)),
         "a list of 4 numbers [x, y, w, h]"),
    ),
    "categories": (
        ("id", True, _is_int, "an integer"),
        ("name", True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    ),
}


def check_structure(data: object, path: Path) -> None:
    """Sections are lists of objects whose keys have the right types; image and category ids are unique."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO instances file (top level is {type(data).__name__}, not an object)")
    for section, fields in _FIELDS.items():
        if section not in data:
            raise DataError(f"{path}: not a COCO instances file: missing key '{section}'")
        items = data[section]
        if not isinstance(items, list):
            raise DataError(f"{path}: '{section}' must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataError(f"{path}: {section}[{i}] must be an object, got {type(item).__name__}")
            for key, required, check, wants in fields:
                if key not in item:
                    if required:
                        raise DataError(f"{path}: {section}[{i}] is missing key '{key}'")
                elif not check(item[key]):
                    raise DataError(f"{path}: {section}[{i}] key '{key}' must be {wants}, got {item[key]!r:.80}")
    for section in ("images", "categories"):
        seen: set[int] = set()
        for i, item in enumerate(data[section]):
            if item["id"] in seen:
                raise DataError(f"{path}: {section}[{i}] repeats id {item['id']}")
            seen.add(item["id"])


def resolve_classes(requested: list[str], categories: list[dict], path: Path | str = "") -> list[dict]:
    """Map class names (or numeric ids) to COCO categories, in the requested order."""
    by_name = {c["name"].lower(): c for c in categories}
    by_id = {c["id"]: c for c in categories}
    chosen = []
    for item in requested:
        cat = by_id.get(int(item)) if item.isdigit() else by_name.get(item.lower())
        if cat is None:
            available = ", ".join(c["name"] for c in categories)
            raise DataError(f"{path}: class '{item}' is not in the annotations; available: {available}")
        if cat in chosen:
            raise DataError(f"class '{item}' is requested twice")
        chosen.append(cat)
    return chosen


SEGMENTATION_PROBLEMS = {
    "bad_polygon": "polygon coordinates are not all finite numbers",
    "bad_segmentation": "segmentation is neither a list of polygons nor an RLE {counts, size}",
    "rle_size_mismatch": "RLE size is not the image's [height, width]",
    "bad_rle": "RLE run lengths are malformed, negative, or do not cover height x width pixels",
}


def clean_segmentation(seg: object, height: int, width: int) -> tuple[list | dict | None, str | None]:
    """Check one annotation's segmentation; returns (segmentation to draw, None) or (None, problem).

    Polygons: lists of finite numbers; those with fewer than 3 points are left out, and far-out
    coordinates are clipped (pycocotools allocates memory in proportion to a polygon's extent).
    RLE: `size` must be the image's and the run lengths (list or compressed string) must be
    non-negative and cover exactly height x width pixels (pycocotools does not check this).
    """
    if isinstance(seg, list):
        if not all(isinstance(p, list) and all(map(_is_number, p)) for p in seg):
            return None, "bad_polygon"
        polygons = [_clip_far_polygon(p, height, width) for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        polygons = [p for p in polygons if len(p) >= 6]
        return (polygons, None) if polygons else (None, "degenerate_polygon")
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(map(_is_int, size))):
            return None, "bad_segmentation"
        if size != [height, width]:
            return None, "rle_size_mismatch"
        runs = rle_runs(counts)
        if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
            return None, "bad_rle"
        return seg, None
    return None, "bad_segmentation"


def rle_runs(counts: object) -> list[int] | None:
    """The run lengths of an RLE's counts (a list, or COCO's compressed string); None if malformed.

    The string decoding follows pycocotools' rleFrString: 5 bits per character (offset 48), bit 6
    continues the number, bit 5 of the last character is the sign; from the 4th run on, each value
    is a difference to the run two places before.
    """
    if isinstance(counts, list):
        return counts if all(map(_is_int, counts)) else None
    if not isinstance(counts, str):
        return None
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64 or shift > 30:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if not 0 <= value < 2**32:
            return None
        runs.append(value)
        value = shift = 0
    return runs if shift == 0 else None


def _clip_far_polygon(xy: list[float], height: int, width: int) -> list[float]:
    """Clip a polygon to [-W, 2W] x [-H, 2H] when it leaves that box; the part over the image is unchanged."""
    x0, y0, x1, y1 = -width, -height, 2 * width, 2 * height
    xs, ys = xy[0::2], xy[1::2]
    if x0 <= min(xs) and max(xs) <= x1 and y0 <= min(ys) and max(ys) <= y1:
        return xy
    points = list(zip(xs, ys))
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        points = _clip_half_plane(points, axis, bound, keep_above)
    return [float(v) for point in points for v in point]


def _clip_half_plane(points: list[tuple[float, float]], axis: int, bound: float,
                     keep_above: bool) -> list[tuple[float, float]]:
    """One Sutherland-Hodgman step: keep the side of the line coordinate[axis] = bound."""
    def inside(p: tuple[float, float]) -> bool:
        return p[axis] >= bound if keep_above else p[axis] <= bound

    out = []
    for i, current in enumerate(points):
        previous = points[i - 1]
        if inside(current) != inside(previous):
            t = (bound - previous[axis]) / (current[axis] - previous[axis])
            crossing = [previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1])]
            crossing[axis] = bound
            out.append((crossing[0], crossing[1]))
        if inside(current):
            out.append(current)
    return out


def build_specs(
    data: dict,
    image_dir: Path,
    classes: list[dict],
    *,
    crowd: str,
    keep_empty: bool,
    per_class: int | None,
    seed: int,
) -> tuple[list[CocoSpec], Counter]:
    """Select the images to convert (sorted by image id); also count annotations of unknown images."""
    label_of = {c["id"]: i + 1 for i, c in enumerate(classes)}
    images = {img["id"]: img for img in data["images"]}
    orphans: Counter = Counter()
    dropped: dict[int, Counter] = defaultdict(Counter)
    broken: dict[int, list[str]] = defaultdict(list)
    instances: dict[int, list[Instance]] = defaultdict(list)
    for ann in data["annotations"]:
        label = label_of.get(ann["category_id"])
        if label is None:
            continue
        img = images.get(ann["image_id"])
        if img is None:
            orphans["annotation_without_image"] += 1
            continue
        seg, problem = clean_segmentation(ann["segmentation"], img["height"], img["width"])
        if problem == "degenerate_polygon":  # no area: nothing of the image is lost
            dropped[img["id"]][problem] += 1
            continue
        if problem:  # an object or crowd region that cannot be drawn: the image's label would be wrong
            broken[img["id"]].append(f"annotation {ann.get('id', '?')}: {SEGMENTATION_PROBLEMS[problem]}")
            continue
        bbox = tuple(float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
        instances[img["id"]].append(Instance(ann.get("id", 0), label, bool(ann.get("iscrowd", 0)), seg, bbox))

    def labelled(image_id: int, label: int | None = None) -> bool:
        return any(
            (not inst.iscrowd or crowd == "label") and (label is None or inst.label == label)
            for inst in instances.get(image_id, ())
        )

    if per_class is not None:
        rng = np.random.default_rng(seed)
        chosen: set[int] = set()
        for label in range(1, len(classes) + 1):
            candidates = sorted(i for i in instances if labelled(i, label))
            chosen.update(int(i) for i in rng.permutation(candidates)[:per_class])
        image_ids = sorted(chosen)
    else:
        image_ids = sorted(i for i in images if keep_empty or labelled(i) or i in broken)

    specs = []
    for image_id in image_ids:
        img = images[image_id]
        specs.append(
            CocoSpec(
                key=safe_key(str(Path(img["file_name"]).with_suffix(""))),
                path=str(image_dir / img["file_name"]),
                image_id=image_id,
                width=img["width"],
                height=img["height"],
                instances=sorted(instances.get(image_id, []), key=lambda inst: inst.ann_id),
                dropped=dict(dropped.get(image_id, {})),
                broken=broken.get(image_id, []),
            )
        )
    return specs, orphans


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
