"""A COCO instances file: read, its structure checked, each segmentation validated before it is drawn.

Every problem is a DataError naming the file, the entry (`annotations[12]`) and the key, or, for a
segmentation that cannot be drawn, a reason the image is skipped for (SEGMENTATION_PROBLEMS).

The file is decoded by msgspec against the schema below, in C, from a memory map, with every
annotation's segmentation kept as raw JSON bytes until its class is selected: the checks cost no
Python pass over the entries, and the polygons of the classes not asked for (most of a COCO file)
never become Python objects. Measured on a COCO-train2017-sized file (450 MB, docs/benchmarks.md):
json.load plus a Python check of every entry took 23 s and 3.9 GB; this path 2.1 s and 0.7 GB. A
file msgspec refuses is read again the slow way (json + check_structure), which names the entry and
key exactly as before, or accepts what Python's json accepts and msgspec does not (NaN).
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from segdist.errors import DataError

Positive = Annotated[int, msgspec.Meta(gt=0)]


class Image(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: Positive
    height: Positive


class Category(msgspec.Struct, gc=False):
    id: int
    name: Annotated[str, msgspec.Meta(min_length=1)]


class Annotation(msgspec.Struct, gc=False):
    """One annotation; `segmentation` is raw JSON (msgspec.Raw) until `CocoFile.segmentation` decodes it."""

    image_id: int
    category_id: int
    segmentation: msgspec.Raw
    id: int | msgspec.UnsetType = msgspec.UNSET
    iscrowd: Literal[0, 1] | bool = 0
    bbox: tuple[float, float, float, float] | msgspec.UnsetType = msgspec.UNSET


class _File(msgspec.Struct):
    images: list[Image]
    annotations: list[Annotation]
    categories: list[Category]


@dataclass
class CocoFile:
    """A checked instances file: images and categories as dicts, annotations as `Annotation`s."""

    images: list[dict]
    categories: list[dict]
    annotations: list[Annotation]
    buffer: Any = field(default=None, repr=False)  # the memory map the raw segmentations point into

    def __getitem__(self, section: str) -> list:
        return getattr(self, section)

    @staticmethod
    def segmentation(annotation: Annotation) -> Any:
        """The annotation's segmentation as Python lists / dicts (`CheckedPolygons` where every
        coordinate was decoded as a number)."""
        seg = annotation.segmentation
        if not isinstance(seg, msgspec.Raw):
            return seg
        try:
            decoded = _SEGMENTATION.decode(seg)
        except msgspec.ValidationError:  # not polygons of numbers nor an object: clean_segmentation says what
            return msgspec.json.decode(seg)
        return CheckedPolygons(decoded) if isinstance(decoded, list) else decoded


class CheckedPolygons(list):
    """Polygons whose coordinates msgspec decoded as floats (from JSON numbers, never bools or strings)."""


_SEGMENTATION = msgspec.json.Decoder(list[list[float]] | dict[str, Any])  # built once: decode(type=) is 20x slower


class _NotFast(Exception):
    """The fast path cannot vouch for the file: read it the slow way, which says what is wrong."""


def load_annotations(path: Path) -> CocoFile:
    """Load a COCO instances JSON and check its structure: the file, entry and key named on error."""
    try:
        return _load_fast(Path(path))
    except _NotFast:
        return _from_dicts(_load_slow(Path(path)))


def _load_fast(path: Path) -> CocoFile:
    try:
        with open(path, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        parsed = msgspec.json.decode(buffer, type=_File)
    except (OSError, ValueError, msgspec.DecodeError):  # ValueError: an empty file cannot be mapped
        raise _NotFast from None
    if any(map(_bad_file_name, (img.file_name for img in parsed.images))) or _repeats(parsed.images) \
            or _repeats(parsed.categories) or not _finite_boxes(parsed.annotations):
        raise _NotFast
    images = [{"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height} for i in parsed.images]
    return CocoFile(images, [{"id": c.id, "name": c.name} for c in parsed.categories], parsed.annotations, buffer)


def _bad_file_name(name: str) -> bool:
    """Whether the name's last part is empty, '.' or '..' (Path only where the quick split is in doubt)."""
    return name.rpartition("/")[2] in ("", ".", "..") and Path(name).name in ("", ".", "..")


def _repeats(entries: list) -> bool:
    return len({e.id for e in entries}) != len(entries)


def _finite_boxes(annotations: list[Annotation]) -> bool:
    """JSON numbers past float's range read as inf; the check in _FIELDS refuses them."""
    boxes = [a.bbox for a in annotations if a.bbox is not msgspec.UNSET]
    return not boxes or bool(np.isfinite(np.asarray(boxes, np.float64)).all())


def _load_slow(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    check_structure(data, path)
    return data


def _from_dicts(data: dict) -> CocoFile:
    """A CocoFile from a file json.load read and check_structure passed."""
    annotations = [Annotation(a["image_id"], a["category_id"], a["segmentation"], a.get("id", msgspec.UNSET),
                              a.get("iscrowd", 0), tuple(a["bbox"]) if "bbox" in a else msgspec.UNSET)
                   for a in data["annotations"]]
    return CocoFile(data["images"], data["categories"], annotations)


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
        checked = isinstance(seg, CheckedPolygons) and all(math.isfinite(sum(p)) for p in seg)
        if not checked and not all(isinstance(p, list) and all(map(_is_number, p)) for p in seg):
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
    near = min(width, height)
    if -near <= min(xy) and max(xy) <= 2 * near:  # inside the box whatever the axis (the common case)
        return xy
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
