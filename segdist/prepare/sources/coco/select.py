"""Which images of a COCO file to convert, and their checked annotations: the driver's side of `prepare coco`.

The annotations of the selected classes are first indexed by image without decoding their
segmentations; only the images that will be converted have theirs decoded and checked. With
--per-class the draw walks each class's seeded permutation of candidate images and stops once
it holds N usable ones, so a 2,000-per-class draw from COCO train2017 decodes the annotations of
about 6,000 images, not of the 64,000 that hold a person.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from msgspec import UNSET

from segdist.prepare.inputs import InputPath, safe_key
from segdist.prepare.locations import input_url
from segdist.prepare.sources.coco.annotation_file import Annotation, CocoFile
from segdist.prepare.sources.coco.render import CocoSpec, Instance
from segdist.prepare.sources.coco.segmentation import SEGMENTATION_PROBLEMS, clean_segmentation


@dataclass
class Annotated:
    """The selected classes' annotations, indexed by image id, and those of the images checked so far."""

    images: dict[int, dict]
    raw: dict[int, list[tuple[int, Annotation]]]  # image id -> (label, annotation), not decoded yet
    orphans: Counter = field(default_factory=Counter)  # annotations of an image the file does not list
    instances: dict[int, list[Instance]] = field(default_factory=dict)  # checked images only
    dropped: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))  # degenerate polygons
    broken: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))  # annotations not drawable

    def checked(self, image_id: int) -> list[Instance]:
        """The image's drawable instances, its segmentations decoded and checked once."""
        if image_id not in self.instances:
            self.instances[image_id] = self._check(image_id)
        return self.instances[image_id]

    def _check(self, image_id: int) -> list[Instance]:
        img, found = self.images[image_id], []
        for label, ann in self.raw.get(image_id, ()):
            seg, problem = clean_segmentation(CocoFile.segmentation(ann), img["height"], img["width"])
            if problem == "degenerate_polygon":  # no area: nothing of the image is lost
                self.dropped[image_id][problem] += 1
            elif problem:  # an object or crowd region that cannot be drawn: the image's label would be wrong
                self.broken[image_id].append(f"annotation {_id(ann, '?')}: {SEGMENTATION_PROBLEMS[problem]}")
            else:
                bbox = tuple(float(v) for v in (ann.bbox if ann.bbox is not UNSET else (0, 0, 0, 0)))
                found.append(Instance(_id(ann, 0), label, bool(ann.iscrowd), seg, bbox))
        return sorted(found, key=lambda inst: inst.ann_id)


def build_specs(data: CocoFile, image_dir: InputPath, classes: list[dict], *, crowd: str, keep_empty: bool,
                per_class: int | None, seed: int) -> tuple[list[CocoSpec], Counter]:
    """Select the images to convert (sorted by image id); also count annotations of unknown images."""
    found = index_annotations(data, {c["id"]: i + 1 for i, c in enumerate(classes)})
    image_ids = select_images(found, len(classes), crowd=crowd, keep_empty=keep_empty, per_class=per_class,
                              seed=seed)
    specs = []
    for i in image_ids:
        img = found.images[i]
        specs.append(CocoSpec(key=safe_key(str(Path(img["file_name"]).with_suffix(""))),
                              path=input_url(image_dir, img["file_name"]), image_id=i, width=img["width"],
                              height=img["height"], instances=found.checked(i), dropped=dict(found.dropped.get(i, {})),
                              broken=found.broken.get(i, [])))
    return specs, found.orphans


def crowd_share(data: CocoFile, category_ids: list[int]) -> float:
    """The crowd (iscrowd=1) regions' share of the annotated area of `category_ids` (the file's `area`, else the box's).

    Over every image, selected or not: with --crowd ignore, an image holding crowd regions only is not selected.
    """
    wanted = set(category_ids)
    anns = [a for a in data.annotations if a.category_id in wanted]
    area = np.fromiter((a.area if a.area is not UNSET else (a.bbox[2] * a.bbox[3] if a.bbox is not UNSET else 0.0)
                        for a in anns), np.float64, len(anns))
    crowd = np.fromiter((bool(a.iscrowd) for a in anns), bool, len(anns))
    total = area.sum()
    return float(area[crowd].sum() / total) if total > 0 else 0.0


def index_annotations(data: CocoFile, label_of: dict[int, int]) -> Annotated:
    """The annotations of the selected categories (`label_of`: category id -> label) by image, undecoded."""
    found = Annotated({img["id"]: img for img in data.images}, defaultdict(list))
    annotations = data.annotations
    category = np.fromiter((a.category_id for a in annotations), np.int64, len(annotations))
    for index in np.flatnonzero(np.isin(category, list(label_of))).tolist():  # the others are never looked at
        ann = annotations[index]
        if ann.image_id not in found.images:
            found.orphans["annotation_without_image"] += 1
            continue
        found.raw[ann.image_id].append((label_of[ann.category_id], ann))
    return found


def _id(ann: Annotation, missing: object) -> object:
    return ann.id if ann.id is not UNSET else missing


def select_images(found: Annotated, num_classes: int, *, crowd: str, keep_empty: bool, per_class: int | None,
                  seed: int) -> list[int]:
    """The image ids to convert, sorted: those with a drawable labelled instance (or all with `keep_empty`),
    or a seeded draw of at most `per_class` such images per class."""
    def labelled(image_id: int, label: int = 0) -> bool:
        return any((not inst.iscrowd or crowd == "label") and (not label or inst.label == label)
                   for inst in found.checked(image_id))

    if per_class is None:
        if keep_empty:
            return sorted(found.images)
        return sorted(i for i in found.raw if labelled(i) or i in found.broken)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in range(1, num_classes + 1):
        candidates = sorted(i for i, anns in found.raw.items()
                            if any((not a.iscrowd or crowd == "label") and lab == label for lab, a in anns))
        taken = 0
        for image_id in rng.permutation(candidates):  # stops once per_class usable images are drawn
            if taken == per_class:
                break
            if labelled(int(image_id), label):
                chosen.add(int(image_id))
                taken += 1
    return sorted(chosen)
