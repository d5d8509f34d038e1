"""ADE20K's scene-parsing release (ADEChallengeData2016): 150 classes; 0 ("other") -> ignore, v -> v - 1.

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   8-bit, 0 = other, 1..150 the classes

MMSegmentation's `reduce_zero_label`: the 150 classes become ids 0..149 and "other" is ignored.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from segdist.errors import DataError
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS
from segdist.prepare.jobs import PrepareJob, label_options
from segdist.prepare.label_values import ValueMap
from segdist.prepare.sources.folder import FolderOptions, convert, pair_files
from segdist.utils.viz import default_palette

FOLDERS = {"train": "training", "val": "validation"}
CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]


def job(root: str | Path, split: str, *, ignore_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
        shard_size: int = 256, shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare ade20k` will write: a split's images and annotations, 0 ignored, v -> v - 1."""
    if split not in FOLDERS:
        raise DataError(f"ADE20K has the splits {sorted(FOLDERS)}, not '{split}'")
    root = Path(root)
    images, annotations = (root / kind / FOLDERS[split] for kind in ("images", "annotations"))
    for folder in (images, annotations):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist (expected ADEChallengeData2016/{folder.parent.name}/"
                            f"{FOLDERS[split]})")
    specs, unpaired = pair_files(images.resolve(), annotations.resolve())
    if not specs:
        raise DataError(f"{images}: nothing selected: no image has an annotation of its name in {annotations}")
    common = label_options(len(CLASSES), ignore_index, max_pixels)
    opts = FolderOptions(ValueMap(len(CLASSES), common["ignore_index"], reduce_zero_label=True),
                         max_pixels=common["max_pixels"], source="ade20k")
    source = {"type": "ade20k", "root": str(root), "split": split, "max_pixels": opts.max_pixels}
    return PrepareJob({split: specs}, partial(convert, opts=opts), CLASSES, default_palette(len(CLASSES) + 1)[1:],
                      opts.ignore_index, source, shard_size, shard_bytes, unpaired)
