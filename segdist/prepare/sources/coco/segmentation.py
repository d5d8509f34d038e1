"""One COCO segmentation checked before it is drawn: polygons of finite numbers, an RLE that covers its image.

A segmentation that cannot be drawn gives a reason its image is skipped for (SEGMENTATION_PROBLEMS);
polygons with fewer than 3 points are left out; far-out polygons are clipped.
"""

from __future__ import annotations

import math

from segdist.prepare.sources.coco.annotation_file import CheckedPolygons, is_int, is_number

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
        if not checked and not all(isinstance(p, list) and all(map(is_number, p)) for p in seg):
            return None, "bad_polygon"
        polygons = [_clip_far_polygon(p, height, width) for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        polygons = [p for p in polygons if len(p) >= 6]
        return (polygons, None) if polygons else (None, "degenerate_polygon")
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(map(is_int, size))):
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
        return counts if all(map(is_int, counts)) else None
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
