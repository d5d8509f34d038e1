"""Plain image and mask folders, paired by file stem (or by relative path with --recursive).

Masks are either index maps (8/16-bit grey or palette PNGs holding class ids) or colour
masks (RGB/RGBA) mapped to class ids through a palette. Fully transparent pixels (RGBA, LA,
PA) are background (class 0). Index values become class ids by the rules of label_values.ValueMap:
identity, `--reduce-zero-label` or a `--map` file; a value equal to the output ignore index, or
to a `--source-ignore` value, means ignore. `--list FILE` takes only the stems it names (VOC's
ImageSets/Segmentation/*.txt). The VOC and ADE20K sources are this source with their layouts.
`--images` and `--masks` may be s3:// prefixes: listed on the driver, each file read by its task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import label_dtype
from segdist.prepare.inputs import (DEFAULT_MAX_PIXELS, InputPath, MaskFile, Sample, SkipSample, read_image, read_mask,
                                    safe_key)
from segdist.prepare.jobs import PrepareJob, label_options, parse_classes, read_json_option, read_stem_list
from segdist.prepare.label_values import ValueMap, load_value_map
from segdist.prepare.locations import Listings, input_name, resolve
from segdist.utils.viz import default_palette

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class FolderSpec:
    key: str
    image_path: str
    mask_path: str


@dataclass(frozen=True)
class FolderOptions:
    values: ValueMap  # index masks: source value -> class id
    palette: tuple[tuple[int, int, int], ...] | None = None  # colour masks: class id -> colour
    max_pixels: int = DEFAULT_MAX_PIXELS
    source: str = "folder"  # the per-sample json's "source"

    @property
    def num_classes(self) -> int:
        return self.values.num_classes

    @property
    def ignore_index(self) -> int:
        return self.values.ignore_index


def job(images: str | Path, masks: str | Path, classes: str | Sequence[str], *, split: str = "train",
        list_file: str | Path | None = None, recursive: bool = False, palette: str | Path | None = None,
        source_ignore: int | Sequence[int] | None = None, reduce_zero_label: bool = False,
        value_map: str | Path | None = None, unknown_to_ignore: bool = False, mask_suffix: str = "",
        ignore_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256,
        shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare folder` will write: image/mask pairs by stem, masks mapped to class ids."""
    names = parse_classes(classes)
    if value_map is not None and (reduce_zero_label or palette):
        raise DataError("--map lists every source value itself: it does not go with --reduce-zero-label or --palette")
    colours = load_palette(Path(palette), names) if palette else None
    stems = read_stem_list(list_file) if list_file else None
    listings = Listings()
    specs, unpaired = pair_files(resolve(images), resolve(masks), mask_suffix, recursive, stems, list_file, listings)
    if not specs:
        raise DataError(f"{images}: nothing selected: no image has a mask named <stem>{mask_suffix}.<ext> in {masks}")
    common = label_options(len(names), ignore_index, max_pixels)
    ignored = (source_ignore,) if isinstance(source_ignore, int) else tuple(source_ignore or ())
    values = ValueMap(len(names), common["ignore_index"], ignored, reduce_zero_label,
                      load_value_map(value_map, names, common["ignore_index"]) if value_map else None,
                      unknown_to_ignore)
    opts = FolderOptions(values, tuple(tuple(c) for c in colours) if colours else None, common["max_pixels"])
    source = {"type": "folder", "images": str(images), "masks": str(masks), "mask_suffix": mask_suffix,
              "source_ignore": list(ignored) or None, "unknown_to_ignore": unknown_to_ignore, "palette": colours,
              "list": str(list_file) if list_file else None, "recursive": recursive,
              "reduce_zero_label": reduce_zero_label, "map": [list(p) for p in values.mapping or ()] or None,
              "max_pixels": opts.max_pixels, **listings.record()}
    return PrepareJob({split: specs}, partial(convert, opts=opts), names, colours or default_palette(len(names)),
                      opts.ignore_index, source, shard_size, shard_bytes, unpaired)


def load_palette(path: Path, classes: list[str]) -> list[list[int]]:
    """A palette file: a JSON list of [r, g, b] per class id, or {class name: [r, g, b]}."""
    raw = read_json_option(path, "palette")
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


def image_files(root: InputPath, recursive: bool = False, listings: Listings | None = None) -> dict[str, str]:
    """Image files under `root` by stem (with --recursive: by relative path without suffix, e.g. city/frame):
    paths, or URLs where `root` is an s3:// prefix."""
    found = (listings or Listings()).files(root, recursive)
    return {Path(name).with_suffix("").as_posix(): path for name, path in found.items()
            if Path(name).suffix.lower() in IMAGE_SUFFIXES}


def pair_files(image_dir: InputPath, mask_dir: InputPath, mask_suffix: str = "", recursive: bool = False,
               stems: list[str] | None = None, list_file: str | Path | None = None,
               listings: Listings | None = None) -> tuple[list[FolderSpec], Counter]:
    """Pair images and masks by stem (mask stem = image stem + mask_suffix); count the unpaired.

    With `stems` (a split list) only those are taken, and a listed stem without image or mask is an error.
    """
    images, masks = image_files(image_dir, recursive, listings), image_files(mask_dir, recursive, listings)
    if stems is not None:
        return [_listed(stem, images, masks, mask_suffix, list_file) for stem in stems], Counter()
    skipped: Counter = Counter()
    specs = []
    for stem, image_path in images.items():
        mask_path = masks.get(stem + mask_suffix)
        if mask_path is None:
            skipped["missing_mask"] += 1
            continue
        specs.append(FolderSpec(key_of(stem), str(image_path), str(mask_path)))
    paired = {stem + mask_suffix for stem in images}
    skipped["missing_image"] += sum(1 for stem in masks if stem not in paired)
    return specs, +skipped


def _listed(stem: str, images: dict[str, str], masks: dict[str, str], mask_suffix: str,
            list_file: str | Path | None) -> FolderSpec:
    image, mask = images.get(stem), masks.get(stem + mask_suffix)
    if image is None or mask is None:
        missing = " and ".join(what for what, path in (("image", image), ("mask", mask)) if path is None)
        raise DataError(f"{list_file}: '{stem}' has no {missing} file")
    return FolderSpec(key_of(stem), str(image), str(mask))


def key_of(stem: str) -> str:
    """A sample key from a stem or relative path: folders kept, joined by '__' (city/frame -> city__frame)."""
    return safe_key(stem.replace("/", "__"))


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
        if not opts.values.unknown_to_ignore:
            found = [f"#{int(c):06x}" for c in np.unique(codes[bad])[:10]]
            raise DataError(f"{path}: colours {found} are not in the palette "
                            "(add them to --palette or pass --unknown-to-ignore)")
        label[bad] = opts.ignore_index
    return label


def mask_label(mask: MaskFile, path: str, opts: FolderOptions) -> np.ndarray:
    """A mask file's values -> class ids (colour masks through the palette, index masks through the ValueMap)."""
    values = mask.values
    if mask.opaque is not None:  # fully transparent pixels are background, whatever value they hold
        colour = values.ndim == 3
        background = np.array(opts.palette[0] if colour and opts.palette else 0, values.dtype)
        values = np.where(mask.opaque[..., None] if colour else mask.opaque, values, background)
    label = _colour_mask(values, path, opts) if values.ndim == 3 else opts.values.apply(values, path)
    return label.astype(label_dtype(opts.num_classes, opts.ignore_index))


def check_size(mask_shape: tuple[int, ...], image_width: int, image_height: int, mask_path: str) -> None:
    if tuple(mask_shape[:2]) != (image_height, image_width):
        height, width = mask_shape[:2]
        raise SkipSample("size_mismatch", f"{mask_path} is {width}x{height}, its image {image_width}x{image_height}")


def convert(spec: FolderSpec, opts: FolderOptions) -> Sample:
    """Worker side: read the image and its mask, map the mask to class ids."""
    image = read_image(spec.image_path, max_pixels=opts.max_pixels)
    mask = read_mask(spec.mask_path, opts.max_pixels)
    check_size(mask.values.shape, image.width, image.height, spec.mask_path)
    label = mask_label(mask, spec.mask_path, opts)
    name = input_name(spec.image_path)
    meta = {"source": opts.source, "id": Path(name).stem, "file": name}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)
