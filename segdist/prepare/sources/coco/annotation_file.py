"""A COCO instances file: read, its structure checked, each segmentation validated before it is drawn.

Every problem is a DataError naming the file, the entry (`annotations[12]`) and the key; a
segmentation is checked when its image is selected (coco_segmentation.clean_segmentation).

The file is decoded by msgspec against the schema below, in C, from a memory map, with every
annotation's segmentation kept as raw JSON bytes until its class is selected: the checks cost no
Python pass over the entries, and the polygons of the classes not asked for (most of a COCO file)
never become Python objects. Measured on a COCO-train2017-sized file (450 MB, docs/benchmarks.md):
json.load plus a Python check of every entry took 24.9 s and 3.5 GB; this path 1.4 s and 0.9 GB. A
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
    area: float | msgspec.UnsetType = msgspec.UNSET


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


def load_annotations(path: Path, shown: Path | str | None = None) -> CocoFile:
    """Load a COCO instances JSON and check its structure: the file (as `shown`, e.g. the URL it came from),
    entry and key named on error."""
    try:
        return _load_fast(Path(path))
    except _NotFast:
        return _from_dicts(read_json_checked(Path(path), shown))


def _load_fast(path: Path) -> CocoFile:
    try:
        with open(path, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        parsed = msgspec.json.decode(buffer, type=_File)
    except (OSError, ValueError, msgspec.DecodeError):  # ValueError: an empty file cannot be mapped
        raise _NotFast from None
    if any(map(_bad_file_name, (img.file_name for img in parsed.images))) or _repeats(parsed.images) \
            or _repeats(parsed.categories) or not _finite_numbers(parsed.annotations):
        raise _NotFast
    images = [{"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height} for i in parsed.images]
    return CocoFile(images, [{"id": c.id, "name": c.name} for c in parsed.categories], parsed.annotations, buffer)


def _bad_file_name(name: str) -> bool:
    """Whether the name's last part is empty, '.' or '..' (Path only where the quick split is in doubt)."""
    return name.rpartition("/")[2] in ("", ".", "..") and Path(name).name in ("", ".", "..")


def _repeats(entries: list) -> bool:
    return len({e.id for e in entries}) != len(entries)


def _finite_numbers(annotations: list[Annotation]) -> bool:
    """JSON numbers past float's range read as inf, and areas may be negative; the checks in _FIELDS refuse them."""
    boxes = [a.bbox for a in annotations if a.bbox is not msgspec.UNSET]
    areas = np.asarray([a.area for a in annotations if a.area is not msgspec.UNSET], np.float64)
    return (not boxes or bool(np.isfinite(np.asarray(boxes, np.float64)).all())) \
        and bool(np.isfinite(areas).all() and (areas >= 0).all())


def read_json_checked(path: Path, shown: Path | str | None = None) -> dict:
    """The slow path: json.load, then check_structure's pass over every entry (its errors name entry and key)."""
    shown = path if shown is None else shown
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{shown}: annotation file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{shown}: not valid JSON ({type(exc).__name__}: {exc})") from None
    check_structure(data, shown)
    return data


def _from_dicts(data: dict) -> CocoFile:
    """A CocoFile from a file json.load read and check_structure passed."""
    annotations = [Annotation(a["image_id"], a["category_id"], a["segmentation"], a.get("id", msgspec.UNSET),
                              a.get("iscrowd", 0), tuple(a["bbox"]) if "bbox" in a else msgspec.UNSET,
                              a.get("area", msgspec.UNSET))
                   for a in data["annotations"]]
    return CocoFile(data["images"], data["categories"], annotations)


def is_int(value: object) -> bool:
    return type(value) is int  # not bool, not float


def is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


# section -> (key, required, check, what the check wants)
_FIELDS: dict[str, tuple[tuple[str, bool, Callable[[object], bool], str], ...]] = {
    "images": (
        ("id", True, is_int, "an integer"),
        ("file_name", True, lambda v: isinstance(v, str) and Path(v).name not in ("", ".", ".."), "a file name"),
        ("width", True, lambda v: is_int(v) and v > 0, "a positive integer"),
        ("height", True, lambda v: is_int(v) and v > 0, "a positive integer"),
    ),
    "annotations": (
        ("image_id", True, is_int, "an integer"),
        ("category_id", True, is_int, "an integer"),
        ("segmentation", True, lambda v: True, ""),  # its content is checked per annotation (clean_segmentation)
        ("id", False, is_int, "an integer"),
        ("iscrowd", False, lambda v: v in (0, 1) and type(v) in (int, bool), "0 or 1"),
        ("bbox", False, lambda v: isinstance(v, list) and len(v) == 4 and all(map(is_number, v)),
         "a list of 4 numbers [x, y, w, h]"),
        ("area", False, lambda v: is_number(v) and v >= 0, "a non-negative number"),
    ),
    "categories": (
        ("id", True, is_int, "an integer"),
        ("name", True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    ),
}


def check_structure(data: object, path: Path | str) -> None:
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
