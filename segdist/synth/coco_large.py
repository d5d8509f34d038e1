"""A synthetic instances file the size and shape of COCO train2017, image files only for what a run will use.

COCO's 80 categories with their real ids and names, each in the share of images it holds in
train2017, about 7.3 instances per image (4.1 per person image, 2 per other category present),
polygons of realistic vertex counts (median about 21 points, some in two parts), object sizes
from small to large as in COCO, about 1% crowd regions as compressed RLE, 2-decimal coordinates.
At 118,287 images that is about 860,000 instances and 450 MB of JSON, written as a stream. Image
files (JPEGs whose pixels follow the polygons) are written only for the images that hold one of
`images_for`'s classes, or for the first `write_images`, so a benchmark of a class subset needs a
few GB of disk, not COCO's 19. Seeded: same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import msgspec
import numpy as np
from tqdm import tqdm

from segdist.errors import DataError
from segdist.synth.common import check_size

# (id, name, images holding it in train2017)
COCO80 = (
    (1, "person", 64115), (2, "bicycle", 3252), (3, "car", 12251), (4, "motorcycle", 3502), (5, "airplane", 2986),
    (6, "bus", 3952), (7, "train", 3588), (8, "truck", 6127), (9, "boat", 3025), (10, "traffic light", 4139),
    (11, "fire hydrant", 1711), (13, "stop sign", 1734), (14, "parking meter", 705), (15, "bench", 5570),
    (16, "bird", 3237), (17, "cat", 4114), (18, "dog", 4385), (19, "horse", 2941), (20, "sheep", 1529),
    (21, "cow", 1968), (22, "elephant", 2143), (23, "bear", 960), (24, "zebra", 1916), (25, "giraffe", 2546),
    (27, "backpack", 5528), (28, "umbrella", 3968), (31, "handbag", 6841), (32, "tie", 3810),
    (33, "suitcase", 2402), (34, "frisbee", 2184), (35, "skis", 3082), (36, "snowboard", 1654),
    (37, "sports ball", 4262), (38, "kite", 2261), (39, "baseball bat", 2506), (40, "baseball glove", 2629),
    (41, "skateboard", 3476), (42, "surfboard", 3486), (43, "tennis racket", 3394), (44, "bottle", 8501),
    (46, "wine glass", 2533), (47, "cup", 9189), (48, "fork", 3555), (49, "knife", 4326), (50, "spoon", 3529),
    (51, "bowl", 7111), (52, "banana", 2243), (53, "apple", 1586), (54, "sandwich", 2365), (55, "orange", 1699),
    (56, "broccoli", 1939), (57, "carrot", 1683), (58, "hot dog", 1222), (59, "pizza", 3166), (60, "donut", 1523),
    (61, "cake", 2925), (62, "chair", 12774), (63, "couch", 4423), (64, "potted plant", 4452), (65, "bed", 3682),
    (67, "dining table", 11837), (70, "toilet", 3353), (72, "tv", 4561), (73, "laptop", 3524),
    (74, "mouse", 1876), (75, "remote", 3076), (76, "keyboard", 2115), (77, "cell phone", 4803),
    (78, "microwave", 1547), (79, "oven", 2877), (80, "toaster", 217), (81, "sink", 4678),
    (82, "refrigerator", 2360), (84, "book", 5332), (85, "clock", 4659), (86, "vase", 3593), (87, "scissors", 947),
    (88, "teddy bear", 2140), (89, "hair drier", 189), (90, "toothbrush", 1007),
)
TRAIN2017_IMAGES = 118_287
SIZES = ((640, 480), (640, 427), (480, 640), (640, 360))  # the commonest COCO image sizes
P_CROWD, P_TWO_PARTS = 0.01, 0.15
CHUNK = 2000  # images encoded per write


def write_coco_like_train2017(out: Path, images: int = TRAIN2017_IMAGES, *, seed: int = 0,
                              images_for: list[str] | None = None, write_images: int | None = None) -> dict:
    """`out/annotations/instances_train.json` for `images` images, and `out/train/*.jpg` for those asked for.

    Returns {"images", "instances", "crowd", "image_files", "json_bytes"}.
    """
    wanted = {cat_id for cat_id, name, _ in COCO80 if images_for and name in images_for}
    unknown = set(images_for or ()) - {name for _, name, _ in COCO80}
    if unknown:
        raise DataError(f"--images-for: not COCO classes: {', '.join(sorted(unknown))}")
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "train").mkdir(exist_ok=True)
    path = out / "annotations" / "instances_train.json"
    counts = {"images": images, "instances": 0, "crowd": 0, "image_files": 0}
    with open(path, "wb") as f:
        info = {"description": f"segdist synthetic COCO-train2017-like, seed {seed}"}
        f.write(b'{"info":' + json.dumps(info).encode())
        f.write(b',"licenses":[],"images":' + msgspec.json.encode([_image_entry(seed, i) for i in range(images)]))
        f.write(b',"annotations":[')
        first = True
        for start in tqdm(range(0, images, CHUNK), desc="synth annotations", unit="chunk", dynamic_ncols=True):
            entries = []
            for index in range(start, min(start + CHUNK, images)):
                anns = _annotations(seed, index)
                entries += anns
                draw = (write_images is not None and index < write_images) or (
                    wanted and any(a["category_id"] in wanted for a in anns))
                if draw:
                    _write_image(out / "train", seed, index, anns)
                    counts["image_files"] += 1
            counts["instances"] += len(entries)
            counts["crowd"] += sum(a["iscrowd"] for a in entries)
            if entries:
                f.write((b"" if first else b",") + msgspec.json.encode(entries)[1:-1])
                first = False
        categories = [{"supercategory": "thing", "id": i, "name": n} for i, n, _ in COCO80]
        f.write(b'],"categories":' + msgspec.json.encode(categories) + b"}")
    counts["json_bytes"] = path.stat().st_size
    return counts


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, index])  # 7: apart from synth.common.image_rng's split codes


def _image_entry(seed: int, index: int) -> dict:
    width, height = SIZES[int(_rng(seed, index).integers(len(SIZES)))]
    check_size(width, height)
    return {"id": index + 1, "file_name": f"{index + 1:012d}.jpg", "width": width, "height": height,
            "license": 1, "coco_url": "", "date_captured": "2013-11-14 17:02:52", "flickr_url": ""}


_SHARE = np.array([n / TRAIN2017_IMAGES for _, _, n in COCO80])
_IDS = np.array([i for i, _, _ in COCO80])


def _annotations(seed: int, index: int) -> list[dict]:
    """The image's instances: which categories, how many of each, their polygons (or crowd RLE)."""
    rng = _rng(seed, index)
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    present = _IDS[rng.random(len(_IDS)) < _SHARE]
    anns = []
    for cat_id in present:
        for _ in range(1 + int(rng.poisson(3.4 if cat_id == 1 else 1.1))):
            anns.append(_instance(rng, int(cat_id), width, height))
    for k, ann in enumerate(anns):
        ann.update(id=(index + 1) * 1000 + k, image_id=index + 1)
    return anns


def _instance(rng: np.random.Generator, cat_id: int, width: int, height: int) -> dict:
    # object sizes as in COCO: about 41% small (< 32^2), 34% medium, 24% large
    side = float(np.exp(rng.normal(np.log(45.0), 0.9)))
    side = min(side, 0.95 * min(width, height))
    cx, cy = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
    if rng.random() < P_CROWD:
        return _crowd(rng, cat_id, cx, cy, side, width, height)
    parts = 2 if rng.random() < P_TWO_PARTS else 1
    polygons = [_polygon(rng, cx + (p * side / 3), cy, side / parts, width, height) for p in range(parts)]
    xs = np.concatenate([p[0::2] for p in polygons])
    ys = np.concatenate([p[1::2] for p in polygons])
    area = sum(_shoelace(p) for p in polygons)
    return {"segmentation": [p.tolist() for p in polygons], "area": round(area, 2), "iscrowd": 0,
            "bbox": [round(float(xs.min()), 2), round(float(ys.min()), 2), round(float(xs.max() - xs.min()), 2),
                     round(float(ys.max() - ys.min()), 2)], "category_id": cat_id}


def _polygon(rng: np.random.Generator, cx: float, cy: float, side: float, width: int, height: int) -> np.ndarray:
    """A star-shaped polygon of a lognormal number of vertices (median about 21), clipped to the image."""
    vertices = int(np.clip(np.round(np.exp(rng.normal(np.log(21.0), 0.5))), 6, 120))
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radius = side / 2 * rng.uniform(0.55, 1.0, vertices)
    x = np.clip(cx + radius * np.cos(angles), 0, width - 1)
    y = np.clip(cy + radius * np.sin(angles), 0, height - 1)
    return np.round(np.stack([x, y], 1).ravel(), 2)


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[0::2], xy[1::2]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _crowd(rng: np.random.Generator, cat_id: int, cx: float, cy: float, side: float, width: int,
           height: int) -> dict:
    """A crowd region: an ellipse as COCO's compressed RLE."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy)), (max(2, int(side)), max(2, int(side / 2))), 0, 0, 360, 1, -1)
    rle = mask_utils.encode(np.asfortranarray(mask))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {"segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
            "area": float(mask_utils.area(rle)), "iscrowd": 1, "bbox": [x, y, w, h], "category_id": cat_id}


def _write_image(folder: Path, seed: int, index: int, anns: list[dict]) -> None:
    """A JPEG whose pixels follow the polygons: noise, then each instance in its category's colour."""
    rng = _rng(seed, index)
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    pixels = rng.integers(60, 160, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
    for ann in anns:
        colour = [int(v) for v in np.random.default_rng(ann["category_id"]).integers(0, 256, 3)]
        if ann["iscrowd"]:
            x, y, w, h = (int(v) for v in ann["bbox"])
            cv2.rectangle(pixels, (x, y), (x + w, y + h), colour, -1)
            continue
        for polygon in ann["segmentation"]:
            points = np.round(np.asarray(polygon).reshape(-1, 2)).astype(np.int32)
            cv2.fillPoly(pixels, [points], colour)
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for image {index + 1}")
    (folder / f"{index + 1:012d}.jpg").write_bytes(data.tobytes())
