"""Plain image and mask folders, paired by file stem.

Masks are either index maps (8/16-bit grey or palette PNGs holding class ids) or colour
masks (RGB/RGBA) mapped to class ids through a palette. Fully transparent pixels (RGBA, LA,
PA) are background (class 0). A source value equal to the output ignore index, or to
`source_ignore`, means ignore.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import IGNORE_INDEX, label_dtype
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS, Sample, SkipSample, read_image, read_mask, safe_key

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class FolderSpec:
    key: str
    image_path: str
    mask_path: str


@dataclass(frozen=True)
class FolderOptions:
    num_classes: int
    ignore_index: int = IGNORE_INDEX
    source_ignore: int | None = None  # mask value that means "ignore" in the source masks
    unknown_to_ignore: bool = False  # out-of-range values / unknown colours -> ignore instead of an error
    palette: tuple[tuple[int, int, int], ...] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


def load_palette(path: Path, classes: list[str]) -> list[list[int]]:
    """A palette file: a JSON list of [r, g, b] per class id, or {class name: [r, g, b]}."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: palette file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON palette ({exc})") from None
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(classes))
        missing = [c for c in classes if c not in raw]
        if unknown or missing:
            raise DataError(f"{path}: palette names {unknown or ''} not in --classes; "
                            f"classes without colour: {missing}")
        raw = [raw[c] for c in classes]
    if not isinstance(raw, list) or len(raw) != len(classes):
        raise DataError(f"{path}: needs one [r, g, b] per class ({len(classes)} classes), "
                        f"got {len(raw) if isinstance(raw, list) else type(raw).__name__}")
    for name, colour in zip(classes, raw):
        if not (isinstance(colour, list) and len(colour) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
            raise DataError(f"{path}: the colour of '{name}' must be [r, g, b] with integers 0..255, got {colour!r}")
    colours = [tuple(c) for c in raw]
    if len(set(colours)) != len(colours):
        twice = next(c for c in colours if colours.count(c) > 1)
        raise DataError(f"{path}: colour {list(twice)} is given to two classes")
    return [list(c) for c in colours]


def build_specs(image_dir: Path, mask_dir: Path, mask_suffix: str = "") -> tuple[list[FolderSpec], Counter]:
    """Pair images and masks by stem (mask stem = image stem + mask_suffix); count the unpaired."""
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d} is not a directory")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    skipped: Counter = Counter()
    specs = []
    for stem, image_path in images.items():
        mask_path = masks.get(stem + mask_suffix)
        if mask_path is None:
            skipped["missing_mask"] += 1
            continue
        specs.append(FolderSpec(safe_key(stem), str(image_path), str(mask_path)))
    paired = {stem + mask_suffix for stem in images}
    skipped["missing_image"] += sum(1 for stem in masks if stem not in paired)
    return specs, +skipped


def _index_mask(values: np.ndarray, path: str, opts: FolderOptions) -> np.ndarray:
    """Source ids -> class ids; the source ignore value and the output ignore index mean ignore."""
    label = values.astype(np.int64)
    ignore = label == opts.ignore_index
    if opts.source_ignore is not None:
        ignore |= label == opts.source_ignore
    bad = ((label < 0) | (label >= opts.num_classes)) & ~ignore
    if bad.any():
        if not opts.unknown_to_ignore:
            found = sorted(int(v) for v in np.unique(label[bad]))[:10]
            raise DataError(
                f"{path}: mask values {found} are outside the class range 0..{opts.num_classes - 1} and are not "
                f"the ignore index {opts.ignore_index} (map them with --source-ignore K or --unknown-to-ignore)"
            )
        ignore |= bad
    label[ignore] = opts.ignore_index
    return label


def _colour_mask(rgb: np.ndarray, path: str, opts: FolderOptions) -> np.ndarray:
    if opts.palette is None:
        raise DataError(f"{path} is a colour mask; pass --palette FILE to map colours to classes")
    rgb = rgb.astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = np.array([(r << 16) | (g << 8) | b for r, g, b in opts.palette])
    order = np.argsort(palette)
    pos = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
    label = order[pos]
    bad = palette[label] != codes
    if bad.any():
        if not opts.unknown_to_ignore:
            found = [f"#{int(c):06x}" for c in np.unique(codes[bad])[:10]]
            raise DataError(f"{path}: colours {found} are not in the palette "
                            "(add them to --palette or pass --unknown-to-ignore)")
        label[bad] = opts.ignore_index
    return label


def convert(spec: FolderSpec, opts: FolderOptions) -> Sample:
    """Worker side: read the image and its mask, map the mask to class ids."""
    image = read_image(Path(spec.image_path), max_pixels=opts.max_pixels)
    mask = read_mask(Path(spec.mask_path), opts.max_pixels)
    if mask.values.shape[:2] != (image.height, image.width):
        height, width = mask.values.shape[:2]
        raise SkipSample("size_mismatch",
                         f"{spec.mask_path} is {width}x{height}, its image {image.width}x{image.height}")
    values = mask.values
    if mask.opaque is not None:  # fully transparent pixels are background, whatever value they hold
        colour = values.ndim == 3
        background = np.array(opts.palette[0] if colour and opts.palette else 0, values.dtype)
        values = np.where(mask.opaque[..., None] if colour else mask.opaque, values, background)
    if values.ndim == 3:
        label = _colour_mask(values, spec.mask_path, opts)
    else:
        label = _index_mask(values, spec.mask_path, opts)
    label = label.astype(label_dtype(opts.num_classes, opts.ignore_index))
    meta = {"source": "folder", "id": Path(spec.image_path).stem, "file": Path(spec.image_path).name}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)
