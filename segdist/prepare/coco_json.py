"""A COCO instances file: read, its structure checked, each segmentation validated before it is drawn.

Every problem is a DataError naming the file, the entry (`annotations[12]`) and the key, or, for a
segmentation that cannot be drawn, a reason the image is skipped for (SEGMENTATION_PROBLEMS).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from segdist.errors import DataError


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
