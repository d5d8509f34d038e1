"""A synthetic dataset in COCO's on-disk layout: JPEG images and an instances JSON.

Polygons, uncompressed and compressed RLE and crowd regions, as in the real files; every pixel
label is consistent with the image, and each class has its own colour and texture so that a small
network can learn them. A pure function of the arguments: same arguments, same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segdist.synth.common import check_size, image_rng, split_counts

COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (18, "dog", "animal"),
)
_COCO_IDS = tuple(cat_id for cat_id, _, _ in COCO_CATEGORIES)

COCO_CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (215, 50, 50),
    2: (50, 185, 60),
    3: (50, 80, 225),
    4: (235, 205, 40),
    5: (40, 205, 215),
    18: (195, 60, 195),
}

_P_EMPTY = 0.05
_P_CROWD = 0.10 / (1.0 - _P_EMPTY)
_P_COMPRESSED = 0.05
_P_TWO_PARTS = 0.15
_P_ANCHOR = 0.30
_MAX_INSTANCES = 6
_TEXTURE_PERIODS = {1: 8, 2: 10, 3: 12, 4: 8, 5: 10, 18: 7}
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 90]


@dataclass(frozen=True)
class _Look:
    """Per-instance appearance parameters."""

    colour: np.ndarray
    dark: float
    phase: tuple[int, int]
    shade: tuple[float, float]


@dataclass(frozen=True)
class _Instance:
    """One annotation before ids are assigned."""

    category_id: int
    segmentation: list[list[float]] | dict[str, Any]
    iscrowd: int
    look: _Look


def write_synthetic_coco(
    out: Path,
    images: int,
    val_images: int | None = None,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
) -> dict[str, int]:
    """Write a COCO-2017-style instance-segmentation tree under ``out``.

    Layout: ``annotations/instances_{train,val}.json`` and
    ``{train,val}/<image_id:012d>.jpg``. Returns the image count per split.
    """
    counts = split_counts(images, val_images)
    check_size(width, height)
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    next_image_id, next_ann_id = 1, 1
    for split, count in counts.items():
        image_dir = out / split
        image_dir.mkdir(parents=True, exist_ok=True)
        image_entries: list[dict[str, Any]] = []
        ann_entries: list[dict[str, Any]] = []
        for index in range(count):
            rng = image_rng(seed, split, index)
            pixels, anns = _coco_image(rng, width, height)
            image_id = next_image_id
            next_image_id += 1
            file_name = f"{image_id:012d}.jpg"
            _write_jpeg(image_dir / file_name, pixels)
            image_entries.append(
                {"id": image_id, "file_name": file_name, "width": width, "height": height}
            )
            for ann in anns:
                ann_entries.append({"id": next_ann_id, "image_id": image_id, **ann})
                next_ann_id += 1
        document = {
            "info": _coco_info(seed),
            "licenses": [{"id": 1, "name": "Synthetic data, no restrictions", "url": ""}],
            "images": image_entries,
            "annotations": ann_entries,
            "categories": [
                {"id": cat_id, "name": name, "supercategory": sup}
                for cat_id, name, sup in COCO_CATEGORIES
            ],
        }
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return counts


def _segmentation_rle(
    segmentation: list[list[float]] | dict[str, Any], height: int, width: int
) -> dict[str, Any]:
    """Turn any COCO segmentation (polygons, uncompressed or compressed RLE) into one RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    return {"size": segmentation["size"], "counts": counts}


def _coco_info(seed: int) -> dict[str, Any]:
    return {
        "description": "segdist synthetic COCO-format dataset",
        "url": "",
        "version": "1.0",
        "year": 2017,
        "contributor": f"segdist synthetic generator (seed {seed})",
        "date_created": "2017/09/01",
    }


def _coco_image(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image and its annotations (without ids), rendered from the masks."""
    pixels = _coco_background(rng, width, height)
    annotations = []
    for inst in _coco_instances(rng, width, height):
        rle = _segmentation_rle(inst.segmentation, height, width)
        area = float(mask_utils.area(rle))
        if area <= 0:
            continue
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        _paint_instance(pixels, mask_utils.decode(rle), bbox, inst)
        annotations.append(
            {
                "category_id": inst.category_id,
                "segmentation": inst.segmentation,
                "area": area,
                "bbox": bbox,
                "iscrowd": inst.iscrowd,
            }
        )
    return pixels, annotations


def _coco_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth noise plus a linear gradient (built on a coarse grid, then upsampled) and lines."""
    rows, cols = height // 48 + 2, width // 48 + 2
    base = rng.uniform(75, 165) + rng.uniform(-18, 18, 3)
    cells = rng.standard_normal((rows, cols, 1)) + 0.4 * rng.standard_normal((rows, cols, 3))
    cells *= rng.uniform(10, 28)
    angle = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(-45, 45) / max(width, height)
    ys = ((np.arange(rows) + 0.5) * height / rows - 0.5) * np.sin(angle) * amplitude
    xs = ((np.arange(cols) + 0.5) * width / cols - 0.5) * np.cos(angle) * amplitude
    cells += (ys[:, None] + xs[None, :])[:, :, None] + base
    coarse = np.clip(cells, 0, 255).astype(np.uint8)
    pixels = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in np.clip(base + rng.uniform(-70, 70, 3), 0, 255))
        cv2.line(pixels, p0, p1, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return pixels


def _coco_instances(rng: np.random.Generator, width: int, height: int) -> list[_Instance]:
    """Choose classes, shapes and encodings for the annotations of one image."""
    if rng.random() < _P_EMPTY:
        return []
    total = int(rng.integers(1, _MAX_INSTANCES + 1))
    crowd_slot = int(rng.integers(0, total)) if rng.random() < _P_CROWD else -1
    scale = min(width, height)
    placed: list[tuple[int, float, float, float]] = []
    instances = []
    for slot in range(total):
        if slot == crowd_slot:
            category_id = int(rng.choice(_COCO_IDS))
            crowd = _crowd_rle(rng, width, height)
            instances.append(_Instance(category_id, crowd, 1, _look(rng, category_id)))
            continue
        category_id, cx, cy = _place(rng, placed, width, height)
        radius = rng.uniform(0.08, 0.24) * scale
        placed.append((category_id, cx, cy, radius))
        segmentation = _instance_segmentation(rng, cx, cy, radius, width, height)
        instances.append(_Instance(category_id, segmentation, 0, _look(rng, category_id)))
    return instances


def _instance_segmentation(
    rng: np.random.Generator, cx: float, cy: float, radius: float, width: int, height: int
) -> list[list[float]] | dict[str, Any]:
    """Polygon parts, occasionally stored as compressed RLE instead."""
    polygons = _instance_polygons(rng, cx, cy, radius, width, height)
    if rng.random() < _P_COMPRESSED:
        return _compressed_rle(rng, polygons, cx, cy, radius, width, height)
    return polygons


def _place(
    rng: np.random.Generator,
    placed: list[tuple[int, float, float, float]],
    width: int,
    height: int,
) -> tuple[int, float, float]:
    """Pick a class and centre; sometimes on top of an earlier instance of another class."""
    if placed and rng.random() < _P_ANCHOR:
        anchor_cat, ax, ay, aradius = placed[int(rng.integers(0, len(placed)))]
        others = [c for c in _COCO_IDS if c != anchor_cat]
        category_id = int(rng.choice(others))
        offset = rng.uniform(-0.5, 0.5, 2) * aradius
        cx = float(np.clip(ax + offset[0], 0, width))
        cy = float(np.clip(ay + offset[1], 0, height))
        return category_id, cx, cy
    category_id = int(rng.choice(_COCO_IDS))
    cx = rng.uniform(0.08, 0.92) * width
    cy = rng.uniform(0.08, 0.92) * height
    return category_id, float(cx), float(cy)


def _instance_polygons(
    rng: np.random.Generator, cx: float, cy: float, radius: float, width: int, height: int
) -> list[list[float]]:
    """One or two star/ellipse-like polygon parts."""
    parts = [_polygon(rng, cx, cy, radius, width, height)]
    if rng.random() < _P_TWO_PARTS:
        angle = rng.uniform(0, 2 * np.pi)
        distance = radius * rng.uniform(1.1, 1.8)
        px = float(np.clip(cx + distance * np.cos(angle), 0, width))
        py = float(np.clip(cy + distance * np.sin(angle), 0, height))
        parts.append(_polygon(rng, px, py, radius * rng.uniform(0.35, 0.7), width, height))
    return parts


def _polygon(
    rng: np.random.Generator, cx: float, cy: float, radius: float, width: int, height: int
) -> list[float]:
    """A star- or ellipse-like polygon, clipped to the image, as flat [x0, y0, x1, y1, ...]."""
    n = int(rng.integers(8, 21))
    step = 2 * np.pi / n
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * step + rng.uniform(0, 2 * np.pi)
    radii = rng.uniform(0.85, 1.0, n)
    if rng.random() < 0.5:
        radii[1::2] *= rng.uniform(0.4, 0.65)
    aspect = rng.uniform(0.55, 1.0)
    rot = rng.uniform(0, np.pi)
    ex = radii * np.cos(angles) * radius
    ey = radii * np.sin(angles) * radius * aspect
    xs = np.clip(cx + ex * np.cos(rot) - ey * np.sin(rot), 0, width)
    ys = np.clip(cy + ex * np.sin(rot) + ey * np.cos(rot), 0, height)
    coords = np.round(np.stack([xs, ys], axis=1).ravel(), 2)
    return [float(v) for v in coords]


def _compressed_rle(
    rng: np.random.Generator,
    polygons: list[list[float]],
    cx: float,
    cy: float,
    radius: float,
    width: int,
    height: int,
) -> dict[str, Any]:
    """Rasterise polygons (sometimes with a hole) and store them as compressed RLE."""
    mask = np.ascontiguousarray(mask_utils.decode(_segmentation_rle(polygons, height, width)))
    if rng.random() < 0.5:
        hole = max(1, int(radius * rng.uniform(0.15, 0.3)))
        cv2.circle(mask, (int(cx), int(cy)), hole, 0, -1)
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("utf-8")}


def _crowd_rle(rng: np.random.Generator, width: int, height: int) -> dict[str, Any]:
    """A dense cluster of small blobs, as uncompressed (list-of-counts) RLE."""
    scale = min(width, height)
    mask = np.zeros((height, width), dtype=np.uint8)
    cx = rng.uniform(0.2, 0.8) * width
    cy = rng.uniform(0.2, 0.8) * height
    spread = rng.uniform(0.1, 0.2) * scale
    for _ in range(int(rng.integers(15, 40))):
        x, y = rng.normal((cx, cy), spread)
        r = max(2, int(rng.uniform(0.03, 0.07) * scale))
        cv2.circle(mask, (int(round(x)), int(round(y))), r, 1, -1)
    if not mask.any():
        cv2.circle(mask, (int(cx), int(cy)), max(2, int(0.05 * scale)), 1, -1)
    return {"counts": _uncompressed_counts(mask), "size": [height, width]}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a (possibly empty) run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs.insert(0, 0)
    return [int(r) for r in runs]


def _look(rng: np.random.Generator, category_id: int) -> _Look:
    colour = np.clip(np.array(COCO_CLASS_COLOURS[category_id]) + rng.uniform(-22, 22, 3), 0, 255)
    return _Look(
        colour=colour.astype(np.float32),
        dark=float(rng.uniform(0.45, 0.6)),
        phase=(int(rng.integers(0, 16)), int(rng.integers(0, 16))),
        shade=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
    )


def _texture(category_id: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Class-specific binary pattern on integer pixel coordinates."""
    if category_id == 1:
        return (yy // 4) % 2 == 0
    if category_id == 2:
        return ((xx // 5) + (yy // 5)) % 2 == 0
    if category_id == 3:
        return (xx // 6) % 2 == 0
    if category_id == 4:
        return (xx % 8 - 3.5) ** 2 + (yy % 8 - 3.5) ** 2 < 7
    if category_id == 5:
        return ((xx + yy) // 5) % 2 == 0
    return (xx % 7 < 2) | (yy % 7 < 2)


def _texture_tile(category_id: int) -> np.ndarray:
    """One period of the class texture, so it can be tiled instead of recomputed."""
    period = _TEXTURE_PERIODS[category_id]
    grid = np.arange(period)
    return np.broadcast_to(_texture(category_id, grid[None, :], grid[:, None]), (period, period))


_TEXTURE_TILES = {cat_id: _texture_tile(cat_id) for cat_id in _COCO_IDS}


def _tiled_texture(category_id: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """The class texture over the window starting at pixel (x0, y0)."""
    tile = _TEXTURE_TILES[category_id]
    period = tile.shape[0]
    reps = (height // period + 2, width // period + 2)
    oy, ox = y0 % period, x0 % period
    return np.tile(tile, reps)[oy : oy + height, ox : ox + width]


def _paint_instance(
    pixels: np.ndarray, mask: np.ndarray, bbox: list[float], inst: _Instance
) -> None:
    """Paint the instance's appearance into ``pixels`` through its mask, inside its bbox."""
    x0, y0 = int(bbox[0]), int(bbox[1])
    x1, y1 = int(np.ceil(bbox[0] + bbox[2])), int(np.ceil(bbox[1] + bbox[3]))
    look = inst.look
    pattern = _tiled_texture(
        inst.category_id, x0 + look.phase[0], y0 + look.phase[1], x1 - x0, y1 - y0
    )
    u = np.linspace(-look.shade[0], look.shade[0], x1 - x0, dtype=np.float32)
    v = np.linspace(-look.shade[1], look.shade[1], y1 - y0, dtype=np.float32)
    factor = np.where(pattern, np.float32(1.0), np.float32(look.dark))
    factor *= 1 + v[:, None] + u[None, :]
    rgb = np.minimum(factor[:, :, None] * look.colour, 255).astype(np.uint8)
    inside = mask[y0:y1, x0:x1, None].astype(bool)
    np.copyto(pixels[y0:y1, x0:x1], rgb, where=inside)


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), _JPEG_PARAMS)
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(data.tobytes())
