"""A prepare job: everything that decides a run's output bytes, and the job each source's options build."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from segdist.errors import DataError
from segdist.format.cityscapes_labels import CLASSES, PALETTE
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS, check_ignore_index, default_ignore_index
from segdist.utils.images import check_max_pixels
from segdist.utils.viz import default_palette


@dataclass
class PrepareJob:
    """Everything that decides a prepare run's output bytes (the resume fingerprint hashes all of it)."""

    splits: dict[str, list]  # split -> input specs, in the source's stable order
    convert: Callable  # spec -> Sample; a functools.partial over the source's convert and its options
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    source: dict  # the source's options as recorded in dataset.json
    shard_size: int = 256
    shard_bytes: int | None = None
    unpaired: Counter = field(default_factory=Counter)  # inputs skipped before conversion, by reason


def parse_classes(classes: str | list[str]) -> list[str]:
    """A class list, or a comma-separated string of names, blanks dropped."""
    names = [name.strip() for name in (classes.split(",") if isinstance(classes, str) else classes) if name.strip()]
    if not names:
        raise DataError("--classes is empty")
    return names


def label_options(num_classes: int, ignore_index: int | None, max_pixels: int) -> dict:
    """The options every source's converter takes: ignore index and pixel limit, checked."""
    ignore = ignore_index if ignore_index is not None else default_ignore_index(num_classes)
    return {"ignore_index": check_ignore_index(ignore, num_classes), "max_pixels": check_max_pixels(max_pixels)}


def coco_job(images: str | Path, annotations: str | Path, classes: str | list[str], *, split: str = "train",
             splits: dict[str, float] | None = None, per_class: int | None = None, seed: int = 0,
             overlap: str = "area", crowd: str = "ignore", keep_empty: bool = False, ignore_index: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256, shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare coco` will write: the selected images, their splits and options (nothing written yet)."""
    from segdist.prepare import coco, coco_json, coco_select

    given, annotations = str(annotations), Path(annotations)
    data = coco_json.load_annotations(annotations)
    cats = coco_json.resolve_classes(parse_classes(classes), data.categories, annotations)
    specs, orphans = coco_select.build_specs(data, Path(images).resolve(), cats, crowd=crowd, keep_empty=keep_empty,
                                      per_class=per_class, seed=seed)
    if not specs:
        raise DataError(f"{annotations}: nothing selected: no image holds an instance of {classes} (crowd regions "
                        f"{'count' if crowd == 'label' else 'do not count'}); --keep-empty keeps images "
                        "without; nothing was written")
    by_split = coco.split_by_ratio(specs, splits, seed) if splits else {split: specs}
    names = ["background"] + [c["name"] for c in cats]
    opts = coco.CocoOptions(num_classes=len(names), overlap=overlap, crowd=crowd,
                            **label_options(len(names), ignore_index, max_pixels))
    source = {"type": "coco", "images": str(images), "annotations": given,
              "category_ids": [c["id"] for c in cats], "overlap": overlap, "crowd": crowd, "keep_empty": keep_empty,
              "per_class": per_class, "splits": splits, "seed": seed, "max_pixels": opts.max_pixels}
    if orphans:  # reported, but no input is skipped for them
        print(f"{annotations}: annotations pointing at no image: " + ", ".join(f"{k}={v}" for k, v in orphans.items()))
    return PrepareJob(by_split, partial(coco.convert, opts=opts), names, default_palette(len(names)),
                      opts.ignore_index, source, shard_size, shard_bytes)


def cityscapes_job(root: str | Path, split: str, *, image_format: str = "png", ignore_index: int | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256,
                   shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare cityscapes` will write: a split's frames, labelIds mapped to the 19 trainIds."""
    from segdist.prepare import cityscapes

    specs = cityscapes.build_specs(Path(root).resolve(), split)
    if not specs:
        raise DataError(f"{Path(root) / 'leftImg8bit' / split}: nothing selected: no */*_leftImg8bit.png frames")
    opts = cityscapes.CityscapesOptions(image_format=image_format, **label_options(len(CLASSES), ignore_index,
                                                                                     max_pixels))
    source = {"type": "cityscapes", "root": str(root), "split": split, "image_format": image_format,
              "max_pixels": opts.max_pixels}
    return PrepareJob({split: specs}, partial(cityscapes.convert, opts=opts), CLASSES, PALETTE, opts.ignore_index,
                      source, shard_size, shard_bytes)


def folder_job(images: str | Path, masks: str | Path, classes: str | list[str], *, split: str = "train",
               palette: str | Path | None = None, source_ignore: int | None = None, unknown_to_ignore: bool = False,
               mask_suffix: str = "", ignore_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               shard_size: int = 256, shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare folder` will write: image/mask pairs by stem, masks mapped to class ids."""
    from segdist.prepare import folder

    names = parse_classes(classes)
    colours = folder.load_palette(Path(palette), names) if palette else None
    specs, unpaired = folder.build_specs(Path(images).resolve(), Path(masks).resolve(), mask_suffix)
    if not specs:
        raise DataError(f"{images}: nothing selected: no image has a mask named <stem>{mask_suffix}.<ext> in {masks}")
    opts = folder.FolderOptions(num_classes=len(names), source_ignore=source_ignore,
                                unknown_to_ignore=unknown_to_ignore,
                                palette=tuple(tuple(c) for c in colours) if colours else None,
                                **label_options(len(names), ignore_index, max_pixels))
    source = {"type": "folder", "images": str(images), "masks": str(masks), "mask_suffix": mask_suffix,
              "source_ignore": source_ignore, "unknown_to_ignore": unknown_to_ignore, "palette": colours,
              "max_pixels": opts.max_pixels}
    return PrepareJob({split: specs}, partial(folder.convert, opts=opts), names,
                      colours or default_palette(len(names)), opts.ignore_index, source, shard_size, shard_bytes,
                      unpaired)


JOBS = {"coco": coco_job, "cityscapes": cityscapes_job, "folder": folder_job}
