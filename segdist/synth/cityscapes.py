"""A synthetic dataset in Cityscapes' on-disk layout: leftImg8bit PNGs and gtFine labelIds.

Street scenes painted back to front with the official labelIds and colours; a pure function of
the arguments: same arguments, same bytes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segdist.synth.common import check_size, image_rng, split_counts

CITYSCAPES_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt",),
}

UNLABELED, EGO_VEHICLE, STATIC = 0, 1, 4
ROAD, SIDEWALK, PARKING, BUILDING = 7, 8, 9, 11
POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR = 17, 20, 21, 23, 24, 26

# Official Cityscapes colours (cityscapesscripts/helpers/labels.py), labelIds 0..33.
_CITYSCAPES_COLOURS = np.array(
    [
        (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0),
        (81, 0, 81), (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140),
        (70, 70, 70), (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100),
        (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
        (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
        (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100),
        (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.float32,
)
# Void classes are black in the official palette; give them distinct dark tones so
# the pixels are not all identical, while staying close to the official colour.
_CITYSCAPES_RENDER_COLOURS = _CITYSCAPES_COLOURS.copy()
_CITYSCAPES_RENDER_COLOURS[UNLABELED] = (10, 10, 10)
_CITYSCAPES_RENDER_COLOURS[EGO_VEHICLE] = (35, 30, 40)
_CITYSCAPES_RENDER_COLOURS[STATIC] = (55, 45, 20)


def write_synthetic_cityscapes(
    out: Path,
    images: int,
    val_images: int | None = None,
    seed: int = 0,
    width: int = 512,
    height: int = 256,
) -> dict[str, int]:
    """Write a Cityscapes-style tree (``leftImg8bit`` + ``gtFine`` labelIds) under ``out``.

    Train images alternate between aachen and bochum, val images are in frankfurt.
    Returns the image count per split.
    """
    counts = split_counts(images, val_images)
    check_size(width, height)
    out = Path(out)
    for split, count in counts.items():
        cities = CITYSCAPES_CITIES[split]
        for city in cities:
            (out / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (out / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = image_rng(seed, split, index)
            labels = _street_labels(rng, width, height)
            pixels = _street_pixels(rng, labels)
            city = cities[index % len(cities)]
            stem = f"{city}_000000_{index:06d}"
            image_path = out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            _write_png(image_path, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
            _write_png(out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", labels)
    return counts


def _street_labels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A street scene as a labelIds map, painted back to front."""
    labels = np.full((height, width), SKY, dtype=np.uint8)
    horizon = int(rng.uniform(0.45, 0.58) * height)
    vanish_x = rng.uniform(0.35, 0.65) * width
    _draw_buildings(rng, labels, horizon)
    _draw_vegetation(rng, labels, horizon)
    labels[horizon:] = ROAD
    right_edge = _draw_sidewalks(rng, labels, horizon, vanish_x)
    _draw_parking(rng, labels, horizon, vanish_x, right_edge)
    _draw_statics(rng, labels, horizon)
    _draw_poles(rng, labels, horizon)
    _draw_traffic(rng, labels, horizon)
    _draw_ego_vehicle(rng, labels)
    _draw_unlabeled(rng, labels)
    return labels


def _draw_buildings(rng: np.random.Generator, labels: np.ndarray, horizon: int) -> None:
    height, width = labels.shape
    x = 0
    while x < width:
        block = max(4, int(rng.uniform(0.05, 0.2) * width))
        if rng.random() > 0.12:
            top = int(rng.uniform(0.06, 0.38) * height)
            labels[top:horizon, x : x + block] = BUILDING
        x += block


def _draw_vegetation(rng: np.random.Generator, labels: np.ndarray, horizon: int) -> None:
    height, width = labels.shape
    for _ in range(int(rng.integers(2, 6))):
        centre = (int(rng.uniform(0, width)), int(horizon - rng.uniform(0.0, 0.2) * height))
        axes = (int(rng.uniform(0.04, 0.12) * width) + 1, int(rng.uniform(0.05, 0.15) * height) + 1)
        cv2.ellipse(labels, centre, axes, float(rng.uniform(0, 180)), 0, 360, VEGETATION, -1)


def _draw_sidewalks(
    rng: np.random.Generator, labels: np.ndarray, horizon: int, vanish_x: float
) -> float:
    """Sidewalk wedges on both sides of the road; returns the right road edge at the bottom row."""
    height, width = labels.shape
    left = vanish_x - rng.uniform(0.35, 0.6) * width
    right = vanish_x + rng.uniform(0.35, 0.6) * width
    gap = rng.uniform(0.02, 0.05) * width
    left_poly = [(0, horizon), (vanish_x - gap, horizon), (left, height), (0, height)]
    right_poly = [(vanish_x + gap, horizon), (width, horizon), (width, height), (right, height)]
    for poly in (left_poly, right_poly):
        cv2.fillPoly(labels, [np.array(poly, dtype=np.int32)], SIDEWALK)
    return right


def _edge_x(horizon: int, height: int, vanish_x: float, bottom_x: float, y: float) -> float:
    t = (y - horizon) / max(1, height - horizon)
    return vanish_x + t * (bottom_x - vanish_x)


def _draw_parking(
    rng: np.random.Generator, labels: np.ndarray, horizon: int, vanish_x: float, right: float
) -> None:
    """A parking strip along the right road edge."""
    height, _ = labels.shape
    y0 = horizon + rng.uniform(0.25, 0.45) * (height - horizon)
    y1 = y0 + rng.uniform(0.2, 0.35) * (height - horizon)
    depth = rng.uniform(0.04, 0.1) * labels.shape[1]
    xs0 = _edge_x(horizon, height, vanish_x, right, y0)
    xs1 = _edge_x(horizon, height, vanish_x, right, y1)
    poly = [(xs0, y0), (xs0 + depth * 0.5, y0), (xs1 + depth, y1), (xs1, y1)]
    cv2.fillPoly(labels, [np.array(poly, dtype=np.int32)], PARKING)


def _ground_point(
    rng: np.random.Generator, labels: np.ndarray, horizon: int, label: int
) -> tuple[int, int]:
    """A point below the horizon on ``label`` (falls back to any point of that row)."""
    height, width = labels.shape
    y = int(rng.uniform(horizon + 0.1 * (height - horizon), height - 1))
    row = np.flatnonzero(labels[y] == label)
    if row.size:
        return int(row[int(rng.integers(0, row.size))]), y
    return int(rng.integers(0, width)), y


def _draw_statics(rng: np.random.Generator, labels: np.ndarray, horizon: int) -> None:
    height = labels.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        x, y = _ground_point(rng, labels, horizon, SIDEWALK)
        size = max(2, int((y - horizon) / max(1, height - horizon) * 0.08 * height))
        cv2.rectangle(labels, (x - size // 2, y - size), (x + size // 2, y), STATIC, -1)


def _draw_poles(rng: np.random.Generator, labels: np.ndarray, horizon: int) -> None:
    height = labels.shape[0]
    for _ in range(int(rng.integers(1, 5))):
        x, y = _ground_point(rng, labels, horizon, SIDEWALK)
        depth = (y - horizon) / max(1, height - horizon)
        top = int(y - (0.25 + 0.5 * depth) * height)
        thick = max(1, int(1 + 4 * depth))
        cv2.rectangle(labels, (x, max(0, top)), (x + thick, y), POLE, -1)
        if rng.random() < 0.6:
            sign_size = int((0.03 + 0.06 * depth) * height)
            _draw_sign(rng, labels, x + thick // 2, max(0, top), sign_size)


def _draw_sign(rng: np.random.Generator, labels: np.ndarray, x: int, y: int, size: int) -> None:
    """A square or round traffic sign hanging from (x, y)."""
    size = max(3, size)
    if rng.random() < 0.5:
        cv2.rectangle(labels, (x - size, y), (x + size, y + 2 * size), TRAFFIC_SIGN, -1)
    else:
        cv2.circle(labels, (x, y + size), size, TRAFFIC_SIGN, -1)


def _draw_traffic(rng: np.random.Generator, labels: np.ndarray, horizon: int) -> None:
    """Cars on the road and persons on the sidewalks, far ones first."""
    height, width = labels.shape
    span = max(1, height - horizon)
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        x, y = _ground_point(rng, labels, horizon, ROAD)
        objects.append((y, CAR, x))
    for _ in range(int(rng.integers(1, 5))):
        x, y = _ground_point(rng, labels, horizon, SIDEWALK)
        objects.append((y, PERSON, x))
    for y, label, x in sorted(objects):
        depth = (y - horizon) / span
        if label == CAR:
            car_w = max(4, int((0.06 + 0.22 * depth) * width))
            car_h = int(car_w * rng.uniform(0.4, 0.55))
            cv2.rectangle(labels, (x - car_w // 2, y - car_h // 2), (x + car_w // 2, y), CAR, -1)
            cab = (x - car_w // 3, y - car_h), (x + car_w // 4, y - car_h // 2)
            cv2.rectangle(labels, cab[0], cab[1], CAR, -1)
        else:
            body_h = max(4, int((0.08 + 0.3 * depth) * height))
            body_w = max(2, body_h // 5)
            cv2.rectangle(labels, (x - body_w // 2, y - body_h), (x + body_w // 2, y), PERSON, -1)
            cv2.circle(labels, (x, y - body_h - body_w // 2), max(1, body_w // 2 + 1), PERSON, -1)


def _draw_ego_vehicle(rng: np.random.Generator, labels: np.ndarray) -> None:
    height, width = labels.shape
    rows = max(2, int(rng.uniform(0.05, 0.1) * height))
    labels[height - rows // 2 :] = EGO_VEHICLE
    axes = (int(width * rng.uniform(0.55, 0.8)), rows)
    cv2.ellipse(labels, (width // 2, height), axes, 0, 180, 360, EGO_VEHICLE, -1)


def _draw_unlabeled(rng: np.random.Generator, labels: np.ndarray) -> None:
    height, width = labels.shape
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 2))
        size = int(rng.integers(1, 4))
        labels[y : y + size, x : x + size] = UNLABELED


def _street_pixels(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Colour each labelId region with its official colour, jittered and textured."""
    height, width = labels.shape
    palette = _CITYSCAPES_RENDER_COLOURS + rng.normal(0, 8, _CITYSCAPES_RENDER_COLOURS.shape)
    pixels = palette.astype(np.float32)[labels]
    _add_street_textures(rng, pixels, labels)
    pixels += (_smooth_noise(rng, 4, 6, width, height) * 12)[:, :, None]
    pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _add_street_textures(rng: np.random.Generator, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Windows on buildings, leafy noise on vegetation, a sky gradient, lane dashes."""
    height, width = labels.shape
    yy = np.arange(height)[:, None]
    xx = np.arange(width)[None, :]
    pixels[((xx % 12) < 6) & ((yy % 14) < 7) & (labels == BUILDING)] *= 0.65
    leaves = _smooth_noise(rng, height // 4 + 1, width // 4 + 1, width, height)
    pixels += (leaves * 30 * (labels == VEGETATION))[:, :, None]
    pixels += np.where(labels == SKY, np.float32(40 / height) * yy, 0)[:, :, None]
    dashes = (labels == ROAD) & (np.abs(xx - width // 2) < 2) & ((yy // 8) % 2 == 0)
    pixels[dashes] = (200, 200, 200)


def _smooth_noise(
    rng: np.random.Generator, rows: int, cols: int, width: int, height: int
) -> np.ndarray:
    """Gaussian noise on a rows x cols grid, upsampled to width x height."""
    cells = rng.standard_normal((rows, cols)).astype(np.float32)
    return cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(data.tobytes())
