"""COCO instance annotations -> one semantic label map per image, for a chosen class subset.

Label = position of the class in `classes` (0 = background). Each class's pixels come from
its instances decoded with pycocotools (polygons, uncompressed and compressed RLE).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segdist.sources.common import DataError, Sample, SkipSample, label_dtype, read_image, safe_key

OVERLAP_POLICIES = ("area", "order", "ignore")
CROWD_MODES = ("ignore", "label")
_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("image_id", "category_id", "segmentation"),
    "categories": ("id", "name"),
}


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
    dropped: dict[str, int] = field(default_factory=dict)  # annotations of this image left out, by reason


@dataclass(frozen=True)
class CocoOptions:
    num_classes: int
    overlap: str = "area"
    crowd: str = "ignore"
    ignore_index: int = 255


def load_annotations(path: Path) -> dict:
    """Load a COCO instances JSON, failing with the missing key and the file's name."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO instances file (top level is {type(data).__name__}, not an object)")
    for section, keys in _REQUIRED.items():
        if section not in data:
            raise DataError(f"{path}: not a COCO instances file: missing key '{section}'")
        for i, item in enumerate(data[section]):
            missing = [k for k in keys if k not in item]
            if missing:
                raise DataError(f"{path}: {section}[{i}] is missing key '{missing[0]}'")
    return data


def resolve_classes(requested: list[str], categories: list[dict]) -> list[dict]:
    """Map class names (or numeric ids) to COCO categories, in the requested order."""
    by_name = {c["name"].lower(): c for c in categories}
    by_id = {int(c["id"]): c for c in categories}
    chosen = []
    for item in requested:
        cat = by_id.get(int(item)) if item.isdigit() else by_name.get(item.lower())
        if cat is None:
            available = ", ".join(c["name"] for c in categories)
            raise DataError(f"class '{item}' is not in the annotations; available: {available}")
        if cat in chosen:
            raise DataError(f"class '{item}' is requested twice")
        chosen.append(cat)
    return chosen


def clean_segmentation(seg: list | dict, height: int, width: int) -> tuple[list | dict | None, str | None]:
    """Drop degenerate polygons (< 3 points); check an RLE's size. Returns (segmentation, problem)."""
    if isinstance(seg, list):
        polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return None, "degenerate_polygon"
        return polygons, None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            return None, "rle_size_mismatch"
        return seg, None
    return None, "bad_segmentation"


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
    label_of = {int(c["id"]): i + 1 for i, c in enumerate(classes)}
    images = {int(img["id"]): img for img in data["images"]}
    orphans: Counter = Counter()
    dropped: dict[int, Counter] = defaultdict(Counter)
    instances: dict[int, list[Instance]] = defaultdict(list)
    for ann in data["annotations"]:
        label = label_of.get(int(ann["category_id"]))
        if label is None:
            continue
        img = images.get(int(ann["image_id"]))
        if img is None:
            orphans["annotation_without_image"] += 1
            continue
        seg, problem = clean_segmentation(ann["segmentation"], int(img["height"]), int(img["width"]))
        if problem:
            dropped[int(img["id"])][problem] += 1
            continue
        bbox = tuple(float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
        instances[int(ann["image_id"])].append(
            Instance(int(ann.get("id", 0)), label, bool(ann.get("iscrowd", 0)), seg, bbox)
        )

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
        image_ids = sorted(i for i in images if keep_empty or labelled(i))

    specs = []
    for image_id in image_ids:
        img = images[image_id]
        specs.append(
            CocoSpec(
                key=safe_key(str(Path(img["file_name"]).with_suffix(""))),
                path=str(image_dir / img["file_name"]),
                image_id=image_id,
                width=int(img["width"]),
                height=int(img["height"]),
                instances=sorted(instances.get(image_id, []), key=lambda inst: inst.ann_id),
                dropped=dict(dropped.get(image_id, {})),
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
    """Paint the label map of one image following the overlap and crowd policies."""
    from pycocotools import mask as mask_utils

    h, w = spec.height, spec.width
    # pycocotools decodes column-major masks; painting into a column-major label avoids strided copies.
    label = np.zeros((h, w), dtype=label_dtype(opts.num_classes, opts.ignore_index), order="F")
    regular = [i for i in spec.instances if not i.iscrowd or opts.crowd == "label"]
    crowd = [i for i in spec.instances if i.iscrowd and opts.crowd == "ignore"]
    rles = {id(i): _rle(i.segmentation, h, w) for i in spec.instances}

    if opts.overlap == "area":
        # Larger instances first, so a small object on top of a large one stays visible.
        areas = {id(i): float(mask_utils.area(rles[id(i)])) for i in regular}
        for inst in sorted(regular, key=lambda i: (-areas[id(i)], i.ann_id)):
            label[mask_utils.decode(rles[id(inst)]).view(bool)] = inst.label
    else:
        claims = np.zeros((h, w), dtype=np.uint8, order="F") if opts.overlap == "ignore" else None
        for cls in range(1, opts.num_classes):
            members = [rles[id(i)] for i in regular if i.label == cls]
            if not members:
                continue
            mask = mask_utils.decode(mask_utils.merge(members)).view(bool)
            label[mask] = cls  # "order": the later class in --classes wins
            if claims is not None:
                claims += mask
        if claims is not None:
            label[claims > 1] = opts.ignore_index
    if crowd:
        label[mask_utils.decode(mask_utils.merge([rles[id(i)] for i in crowd])).view(bool)] = opts.ignore_index
    return np.ascontiguousarray(label)


def convert(spec: CocoSpec, opts: CocoOptions) -> Sample:
    """Worker side: read and check the image, paint its label map."""
    image = read_image(Path(spec.path), (spec.width, spec.height))
    label = render_label(spec, opts)
    boxes = [
        [inst.label, *(round(v, 2) for v in inst.bbox)] for inst in spec.instances if not inst.iscrowd
    ]
    meta = {"source": "coco", "id": spec.image_id, "file": Path(spec.path).name, "boxes": boxes}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)


def split_by_ratio(specs: list, ratios: dict[str, float], seed: int) -> dict[str, list]:
    """Seeded, reproducible ratio split; each split keeps the input order."""
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise DataError(f"--splits ratios must sum to 1, got {total:g}")
    order = np.random.default_rng(seed).permutation(len(specs))
    bounds = np.round(np.cumsum(list(ratios.values())) * len(specs)).astype(int)
    out, start = {}, 0
    for name, end in zip(ratios, bounds):
        out[name] = [specs[i] for i in sorted(order[start:end])]
        start = end
    return out
