"""COCO instances JSON + images -> one semantic label map per image, for a chosen class subset.

    annotation_file.py  the instances file read (msgspec, in C) and checked
    segmentation.py  one segmentation (polygons, RLE) checked
    select.py        the images drawn (--per-class) and their annotations
    render.py        worker side: the instances painted into a label map; the ratio split

--images and --annotations may be s3:// or http(s):// URLs: the driver fetches the annotation file
(into a temporary file), and each task reads its images by the URLs the file's names give.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from segdist.errors import DataError
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS
from segdist.prepare.jobs import PrepareJob, label_options, parse_classes
from segdist.prepare.locations import is_remote, local_copy, resolve
from segdist.prepare.sources.coco import annotation_file as coco_json
from segdist.prepare.sources.coco import render, select
from segdist.utils.secrets import redact
from segdist.utils.viz import default_palette


def job(images: str | Path, annotations: str | Path, classes: str | list[str], *, split: str = "train",
        splits: dict[str, float] | None = None, per_class: int | None = None, seed: int = 0,
        overlap: str = "area", crowd: str = "ignore", keep_empty: bool = False, ignore_index: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256, shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare coco` will write: the selected images, their splits and options (nothing written yet)."""
    given = str(annotations)
    annotations = redact(given) if is_remote(given) else Path(given)  # as messages name it
    with local_copy(given, "annotation file") as local:  # a remote file: fetched, the only one the driver reads
        data = coco_json.load_annotations(local, annotations)
    cats = coco_json.resolve_classes(parse_classes(classes), data.categories, annotations)
    specs, orphans = select.build_specs(data, resolve(images), cats, crowd=crowd, keep_empty=keep_empty,
                                        per_class=per_class, seed=seed)
    if not specs:
        raise DataError(f"{annotations}: nothing selected: no image holds an instance of {classes} (crowd regions "
                        f"{'count' if crowd == 'label' else 'do not count'}); --keep-empty keeps images "
                        "without; nothing was written")
    by_split = render.split_by_ratio(specs, splits, seed) if splits else {split: specs}
    names = ["background"] + [c["name"] for c in cats]
    opts = render.CocoOptions(num_classes=len(names), overlap=overlap, crowd=crowd,
                              **label_options(len(names), ignore_index, max_pixels))
    share = select.crowd_share(data, [c["id"] for c in cats])
    source = {"type": "coco", "images": str(images), "annotations": given,
              "category_ids": [c["id"] for c in cats], "overlap": overlap, "crowd": crowd, "keep_empty": keep_empty,
              "per_class": per_class, "splits": splits, "seed": seed, "max_pixels": opts.max_pixels,
              "crowd_share": round(share, 4)}
    if orphans:  # reported, but no input is skipped for them
        print(f"{annotations}: annotations pointing at no image: " + ", ".join(f"{k}={v}" for k, v in orphans.items()))
    if share > CROWD_WARNING and crowd == "ignore":
        print(f"segdist: WARNING: {annotations}: crowd (iscrowd=1) regions are {share:.0%} of the selected classes' "
              "annotated area and become ignore pixels; annotation tools such as CVAT export brush masks as "
              "crowd RLE: pass --crowd label to train on them")
    return PrepareJob(by_split, partial(render.convert, opts=opts), names, default_palette(len(names)),
                      opts.ignore_index, source, shard_size, shard_bytes)


CROWD_WARNING = 0.2  # above this share of the annotated area, crowd regions are likely a tool's masks, not crowds
