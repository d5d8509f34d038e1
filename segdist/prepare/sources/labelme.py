"""LabelMe JSON files (labelme 3.x-5.x: polygons, rectangles, circles, lines) -> semantic label maps.

Each `<stem>.json` under --root (with --recursive also in subfolders; keys keep the folders) is
one sample. Its image is `imagePath`, relative to the JSON's folder (Windows backslashes read as
folders), or, when `imageData` is set, the image embedded in the JSON (base64; labelme prefers it
too). `imageHeight`/`imageWidth`, where given, must match the image.

Labels: 0 is background, the first name of --classes is 1. LabelMe's labels.txt convention is
understood: the names `__ignore__` and `_background_` are no classes (dropped from --classes),
and shapes labelled with them paint the ignore index and background (as do shapes labelled
"background", class 0's name in dataset.json).

Rasterisation is labelme's own (labelme.utils.shape_to_mask and shapes_to_label), drawn with
PIL's ImageDraw: a shape's pixels are exactly those PIL draws for

    polygon (also a shape without shape_type, labelme 3.x)   draw.polygon(xy, outline=1, fill=1)
    rectangle (two corners, either order)                    draw.rectangle(sorted corners, outline=1, fill=1)
    circle (centre, a point on the rim)                      draw.ellipse([cx-d, cy-d, cx+d, cy+d], outline=1, fill=1)
    line (two points), linestrip                             draw.line(xy, fill=1, width=--line-width)

and shapes are painted in file order, later over earlier; `group_id` plays no part. All shapes
are drawn on one canvas with their class id as ink, which gives the same pixels as labelme's mask
per shape (PIL's coverage does not depend on the ink). `point` shapes and types labelme cannot
rasterise (mask, cuboid, ...) are left out and counted in dataset.json's `dropped_annotations` by
type, as are shapes whose label is not in --classes ("unknown_label"), unless --unknown-to-ignore
paints them as the ignore index. A file that is not LabelMe, or holds a shape labelme could not
draw (points that are not [x, y] numbers, too few of them, or further than one image size
outside the image), is skipped and counted, with the file and its problem in `skipped_examples`.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segdist.errors import DataError
from segdist.format.manifest import IGNORE_INDEX, label_dtype
from segdist.prepare.inputs import (
    DEFAULT_MAX_PIXELS,
    ImageFile,
    Sample,
    SkipSample,
    check_image,
    decoder_errors,
    read_image,
)
from segdist.prepare.jobs import PrepareJob, label_options, parse_classes, read_stem_list
from segdist.prepare.sources.folder import key_of
from segdist.utils.viz import default_palette

# shape_type -> (fewest, most) points; labelme asserts these counts (most None: no limit)
DRAWN = {"polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2), "line": (2, 2), "linestrip": (2, None)}
BACKGROUND, IGNORE = "_background_", "__ignore__"  # labelme's labels.txt names for 0 and the ignore index


@dataclass(frozen=True)
class Shape:
    """One shape reduced to what drawing needs."""

    value: int  # class id, 0 or the ignore index
    kind: str  # a key of DRAWN
    points: tuple[tuple[float, float], ...]


@dataclass
class LabelmeSpec:
    """One JSON file, read by the driver: its image and the shapes to draw (never the image bytes)."""

    key: str
    path: str  # the JSON file
    image: str | None = None  # the image file; None: embedded in the JSON (imageData, decoded by the worker)
    width: int | None = None  # imageWidth/imageHeight, where the file gives them
    height: int | None = None
    shapes: list[Shape] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # shapes left out, by type or "unknown_label"
    broken: tuple[str, str] | None = None  # (reason, detail): not LabelMe; the worker skips it


@dataclass(frozen=True)
class LabelmeOptions:
    num_classes: int
    line_width: int = 10
    ignore_index: int = IGNORE_INDEX
    max_pixels: int = DEFAULT_MAX_PIXELS


def job(root: str | Path, classes: str | Sequence[str], *, split: str = "train", list_file: str | Path | None = None,
        recursive: bool = False, line_width: int = 10, unknown_to_ignore: bool = False,
        ignore_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256,
        shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare labelme` will write: every JSON file read once into the shapes to draw."""
    names = class_names(classes)
    if isinstance(line_width, bool) or not isinstance(line_width, int) or line_width < 1:
        raise DataError(f"--line-width must be a whole number of pixels, at least 1, got {line_width!r}")
    common = label_options(len(names), ignore_index, max_pixels)
    values = {BACKGROUND: 0, IGNORE: common["ignore_index"], **{name: i for i, name in enumerate(names)}}
    files = select_files(Path(root).resolve(), recursive, list_file)
    if not files:
        raise DataError(f"{root}: nothing selected: no <stem>.json file{' (also in subfolders)' if recursive else ''}")
    unknown = common["ignore_index"] if unknown_to_ignore else None
    specs = [read_spec(stem, path, values, unknown) for stem, path in files]
    opts = LabelmeOptions(len(names), line_width, **common)
    source = {"type": "labelme", "root": str(root), "split": split, "list": str(list_file) if list_file else None,
              "recursive": recursive, "line_width": line_width, "unknown_to_ignore": unknown_to_ignore,
              "max_pixels": opts.max_pixels}
    return PrepareJob({split: specs}, partial(convert, opts=opts), names, default_palette(len(names)),
                      opts.ignore_index, source, shard_size, shard_bytes)


def class_names(classes: str | Sequence[str]) -> list[str]:
    """["background", *--classes], without labelme's reserved names; a name given twice is an error."""
    names = ["background"] + [name for name in parse_classes(classes) if name not in (BACKGROUND, IGNORE)]
    if len(names) == 1:
        raise DataError(f"--classes {classes}: no class besides {BACKGROUND} and {IGNORE}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"--classes: {twice} given twice (class 0 is 'background')")
    return names


def select_files(root: Path, recursive: bool, list_file: str | Path | None) -> list[tuple[str, Path]]:
    """(stem, path) of the JSON files taken: all under `root` by path, or those `list_file` names, in its order."""
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    found = sorted(root.rglob("*.json") if recursive else root.glob("*.json"))
    files = {p.relative_to(root).with_suffix("").as_posix(): p for p in found if p.is_file()}
    if list_file is None:
        return list(files.items())
    stems = [stem.removesuffix(".json") for stem in read_stem_list(list_file)]
    missing = [stem for stem in stems if stem not in files]
    if missing:
        hint = "" if recursive or not any("/" in s for s in missing) else " (subfolders need --recursive)"
        raise DataError(f"{list_file}: no JSON file for {missing[:10]} under {root}{hint}")
    return [(stem, files[stem]) for stem in stems]


def read_spec(stem: str, path: Path, values: dict[str, int], unknown: int | None) -> LabelmeSpec:
    """Read one JSON file into its spec; a file that is not LabelMe gives a spec the worker skips."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        return LabelmeSpec(key_of(stem), str(path), broken=("unreadable_json", f"{path}: {exc}"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return LabelmeSpec(key_of(stem), str(path), broken=("corrupt_json", f"{path}: {type(exc).__name__}: {exc}"))
    try:
        return parse(key_of(stem), path, data, values, unknown)
    except SkipSample as exc:
        return LabelmeSpec(key_of(stem), str(path), broken=(exc.reason, exc.detail))


def parse(key: str, path: Path, data: object, values: dict[str, int], unknown: int | None) -> LabelmeSpec:
    """A LabelMe document's image and shapes; SkipSample where it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise SkipSample("not_labelme", f"{path}: not a LabelMe file (no 'shapes' list)")
    spec = LabelmeSpec(key, str(path), image=image_path(path, data))
    spec.width, spec.height = image_size(path, data)
    dropped: Counter = Counter()
    for number, raw in enumerate(data["shapes"], 1):
        shape, reason = read_shape(raw, f"{path}: shape {number}", values, unknown)
        if shape is None:
            dropped[reason] += 1
        else:
            spec.shapes.append(shape)
    spec.dropped = dict(sorted(dropped.items()))
    return spec


def image_path(path: Path, data: dict) -> str | None:
    """The image file, relative to the JSON's folder; None where the JSON embeds the image (imageData)."""
    embedded, name = data.get("imageData"), data.get("imagePath")
    if embedded is not None:
        if not isinstance(embedded, str):
            raise SkipSample("not_labelme", f"{path}: imageData is {type(embedded).__name__}, not base64 text")
        return None
    if not isinstance(name, str) or not name:
        raise SkipSample("not_labelme", f"{path}: neither imagePath nor imageData names the image")
    return str(path.parent / name.replace("\\", "/"))  # files saved on Windows name folders with backslashes


def image_size(path: Path, data: dict) -> tuple[int | None, int | None]:
    """(imageWidth, imageHeight), or (None, None) where the file gives neither (early labelme 3.x)."""
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if width is None and height is None:
        return None, None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise SkipSample("not_labelme", f"{path}: imageWidth/imageHeight must be positive integers, "
                                        f"got {width!r}/{height!r}")
    return width, height


def read_shape(raw: object, where: str, values: dict[str, int], unknown: int | None) -> tuple[Shape | None, str]:
    """One shape to draw, or (None, why it is left out); SkipSample for a shape labelme could not read or draw."""
    if not isinstance(raw, dict) or not isinstance(raw.get("label"), str) or not isinstance(raw.get("points"), list):
        raise SkipSample("bad_shape", f"{where}: a shape needs a 'label' text and a 'points' list")
    kind = raw.get("shape_type") or "polygon"  # labelme 3.x wrote no shape_type: polygons
    if not isinstance(kind, str):
        raise SkipSample("bad_shape", f"{where}: shape_type {kind!r} is not a name")
    if kind not in DRAWN:
        return None, kind[:40]
    points = shape_points(raw["points"], kind, where)
    value = values.get(raw["label"], unknown)
    if value is None:
        return None, "unknown_label"
    return Shape(value, kind, points), ""


def shape_points(raw: list, kind: str, where: str) -> tuple[tuple[float, float], ...]:
    """The [x, y] points of a drawn shape, checked: finite numbers, as many as labelme asserts for the type."""
    if not all(isinstance(p, list) and len(p) == 2 and all(_finite(v) for v in p) for p in raw):
        raise SkipSample("bad_shape", f"{where}: points must be [x, y] pairs of finite numbers")
    fewest, most = DRAWN[kind]
    if len(raw) < fewest or (most is not None and len(raw) > most):
        need = f"{fewest}" if fewest == most else f"at least {fewest}"
        raise SkipSample("bad_shape", f"{where}: a {kind} needs {need} points, got {len(raw)}")
    return tuple((p[0], p[1]) for p in raw)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e15 < value < 1e15  # NaN: False


def check_extent(shapes: list[Shape], width: int, height: int, path: str) -> None:
    """Points at most one image size outside the image (PIL's ellipse time grows with the radius squared)."""
    for number, shape in enumerate(shapes, 1):
        if not all(-width <= x <= 2 * width and -height <= y <= 2 * height for x, y in shape.points):
            raise SkipSample("bad_shape", f"{path}: a {shape.kind} reaches further than one image size "
                                          f"outside the {width}x{height} image")


def render_label(shapes: list[Shape], width: int, height: int, dtype: type, line_width: int) -> np.ndarray:
    """The label map: every shape drawn in order with its value as ink, labelme's rule (see the module doc)."""
    canvas = Image.new("L" if np.dtype(dtype).itemsize == 1 else "I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        draw_shape(draw, shape, line_width)
    return np.asarray(canvas).astype(dtype)


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, line_width: int) -> None:
    """labelme's shape_to_mask, with ink = the shape's value."""
    xy, ink = list(shape.points), shape.value
    if shape.kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)  # as labelme computes it, to the last bit
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=ink, fill=ink)
    elif shape.kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=ink, fill=ink)
    elif shape.kind in ("line", "linestrip"):
        draw.line(xy, fill=ink, width=line_width)
    else:
        draw.polygon(xy, outline=ink, fill=ink)


def read_embedded(json_path: str, max_pixels: int) -> ImageFile:
    """The image embedded in a JSON file, checked as `read_image` checks a file (bytes kept as stored)."""
    with decoder_errors("corrupt_json", json_path):
        text = json.loads(Path(json_path).read_bytes())["imageData"]
    name = f"{json_path} (imageData)"
    with decoder_errors("corrupt_image", name):
        data = base64.b64decode(text)
    return check_image(data, name, max_pixels=max_pixels)


def convert(spec: LabelmeSpec, opts: LabelmeOptions) -> Sample:
    """Worker side: read and check the image (file or imageData), draw the shapes into its label map."""
    if spec.broken:
        raise SkipSample(*spec.broken)
    if spec.image is None:
        image = read_embedded(spec.path, opts.max_pixels)
    else:
        image = read_image(Path(spec.image), max_pixels=opts.max_pixels)
    if spec.width is not None and (image.width, image.height) != (spec.width, spec.height):
        raise SkipSample("size_mismatch", f"{spec.image or 'its imageData'} is {image.width}x{image.height} but "
                                          f"{spec.path} says imageWidth x imageHeight = {spec.width}x{spec.height}")
    check_extent(spec.shapes, image.width, image.height, spec.path)
    with decoder_errors("bad_shape", spec.path):
        label = render_label(spec.shapes, image.width, image.height,
                             label_dtype(opts.num_classes, opts.ignore_index), opts.line_width)
    meta = {"source": "labelme", "id": Path(spec.path).stem, "file": Path(spec.path).name,
            "image": Path(spec.image).name if spec.image else None}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)
