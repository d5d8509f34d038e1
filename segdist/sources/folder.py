"""Plain image and mask folders, paired by file stem.

Masks are either index maps (8/16-bit grey or palette PNGs holding class ids) or colour
masks (RGB/RGBA) mapped to class ids through a palette. Fully transparent RGBA pixels are
background (class 0).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segdist.sources.common import IGNORE_INDEX, DataError, Sample, SkipSample, label_dtype, read_image, safe_key

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class FolderSpec:
    key: str
    image_path: str
    mask_path: str


@dataclass(frozen=True)
class FolderOptions:
    num_classes: int
    source_ignore: int | None = None  # mask value that means "ignore" in the source masks
    unknown_to_ignore: bool = False  # out-of-range values / unknown colours -> ignore instead of an error
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_index: int = IGNORE_INDEX


def load_palette(path: Path, classes: list[str]) -> list[list[int]]:
    """A palette file: a JSON list of [r, g, b] per class id, or {class name: [r, g, b]}."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: palette file does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(classes))
        missing = [c for c in classes if c not in raw]
        if unknown or missing:
            raise DataError(f"{path}: palette names {unknown or ''} not in --classes; classes without colour: {missing}")
        raw = [raw[c] for c in classes]
    if len(raw) != len(classes) or any(len(c) != 3 for c in raw):
        raise DataError(f"{path}: needs one [r, g, b] per class ({len(classes)}), got {len(raw)} entries")
    return [[int(v) for v in colour] for colour in raw]


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
    label = values.astype(np.int64)
    ignore = label == opts.source_ignore if opts.source_ignore is not None else np.zeros(label.shape, bool)
    bad = (label >= opts.num_classes) & ~ignore
    if bad.any():
        if not opts.unknown_to_ignore:
            found = sorted(int(v) for v in np.unique(label[bad]))[:10]
            raise DataError(
                f"{path}: mask values {found} are outside the class range 0..{opts.num_classes - 1} "
                "(map them with --ignore-index K or --unknown-to-ignore)"
            )
        ignore |= bad
    label[ignore] = opts.ignore_index
    return label


def _colour_mask(rgba: np.ndarray, path: str, opts: FolderOptions) -> np.ndarray:
    if opts.palette is None:
        raise DataError(f"{path} is a colour mask; pass --palette FILE to map colours to classes")
    rgb = rgba[..., :3].astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = np.array([(r << 16) | (g << 8) | b for r, g, b in opts.palette])
    if rgba.shape[-1] == 4:
        codes[rgba[..., 3] == 0] = palette[0]
    order = np.argsort(palette)
    pos = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
    label = order[pos]
    bad = palette[label] != codes
    if bad.any():
        if not opts.unknown_to_ignore:
            found = [f"#{int(c):06x}" for c in np.unique(codes[bad])[:10]]
            raise DataError(f"{path}: colours {found} are not in the palette (or pass --unknown-to-ignore)")
        label[bad] = opts.ignore_index
    return label


def convert(spec: FolderSpec, opts: FolderOptions) -> Sample:
    """Worker side: read the image and its mask, map the mask to class ids."""
    image = read_image(Path(spec.image_path))
    try:
        with Image.open(spec.mask_path) as img:
            mode = img.mode
            if mode in ("RGB", "RGBA"):
                values = np.asarray(img)
            elif mode in ("L", "P", "I;16", "I"):
                values = np.asarray(img)  # palette PNGs hold class ids; their colours are ignored
            else:
                values = np.asarray(img.convert("L"))
    except OSError as exc:
        raise SkipSample("corrupt_mask", f"{spec.mask_path}: {exc}") from None
    if values.shape[:2] != (image.height, image.width):
        raise SkipSample("size_mismatch", f"{spec.mask_path} is {values.shape[1::-1]}, image {image.width, image.height}")
    if values.ndim == 3:
        label = _colour_mask(values, spec.mask_path, opts)
    else:
        label = _index_mask(values, spec.mask_path, opts)
    label = label.astype(label_dtype(opts.num_classes, opts.ignore_index))
    meta = {"source": "folder", "id": Path(spec.image_path).stem, "file": Path(spec.image_path).name}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)
