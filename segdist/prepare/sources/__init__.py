"""The sources `segdist prepare` reads, in one table: name -> module, help line and command-line options.

Each source is one module with `job(**options) -> PrepareJob` (reading the inputs, nothing written)
and the worker-side `convert(spec, opts) -> Sample`. The command line (`segdist prepare NAME`), the
Python API (`segdist.prepare_dataset(NAME, out, **options)`) and the docs' list of sources all come
from SOURCES below; an option's `dest` is the keyword `job` takes. Adding a source is one module,
one row here and its tests. Sources never import the driver or Ray (an import-linter contract).

This module stays light (no numpy, no source module imported): the CLI builds its parser from it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from segdist.errors import DataError


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def ratios(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not value:
            raise argparse.ArgumentTypeError(f"expected name=ratio, got '{part}'")
        out[name.strip()] = float(value)
    return out


def option(*flags: str, **settings: Any) -> tuple[tuple[str, ...], dict]:
    """One command-line option: argparse's add_argument arguments."""
    return flags, settings


CLASSES_HELP = "comma-separated names, or @FILE with one name a line"
LIST_HELP = "only the stems in FILE (one a line, e.g. ImageSets/Segmentation/train.txt); a missing one is an error"
UNKNOWN_HELP = "values (labels) outside the classes -> ignore, instead of an error naming the file"
RECURSIVE_HELP = "pair files by relative path under the roots (city/frame.png); keys keep the folders"


@dataclass(frozen=True)
class Source:
    name: str
    module: str  # holds job(**options) -> PrepareJob
    help: str
    options: tuple[tuple[tuple[str, ...], dict], ...]
    exclusive: tuple[tuple[tuple[str, ...], dict], ...] = ()  # options of which at most one may be given

    def job(self, **options: Any):  # noqa: ANN201 - a segdist.prepare.jobs.PrepareJob
        """What this source will write for `options` (the inputs read and checked, nothing written)."""
        build = importlib.import_module(self.module).job
        unknown = sorted(set(options) - set(inspect.signature(build).parameters))
        if unknown:
            raise DataError(f"prepare {self.name}: unknown option(s) {unknown}; it takes {self.keywords()}")
        return build(**options)

    def keywords(self) -> list[str]:
        """The keyword arguments `job` takes, as the command line names them (dest)."""
        return [settings.get("dest") or flags[0].lstrip("-").replace("-", "_")
                for flags, settings in (*self.options, *self.exclusive)]


SOURCES = {source.name: source for source in (
    Source("coco", "segdist.prepare.sources.coco", "COCO instances JSON + images (polygons, RLE, crowd)", (
        option("--images", required=True),
        option("--annotations", required=True),
        option("--classes", required=True, help="COCO names or ids, comma-separated or @FILE; label = position"),
        option("--per-class", type=positive, default=None, help="at most N images per class (seeded)"),
        option("--seed", type=int, default=0, help="seed for --per-class and --splits"),
        option("--overlap", choices=["area", "order", "ignore", "ignore-between-classes"], default="area",
               help="pixels of several instances: larger painted first (area), later class wins (order), "
                    "ignore index where 2+ instances meet (ignore, torchvision's rule) or 2+ classes meet"),
        option("--crowd", choices=["ignore", "label"], default="ignore",
               help="crowd (iscrowd=1) regions: ignore pixels, or labelled as their class (CVAT brush masks)"),
        option("--keep-empty", action="store_true", help="keep images with no selected instance"),
    ), exclusive=(
        option("--split", default="train", help="split name for all selected images"),
        option("--splits", type=ratios, default=None, help="seeded ratio split, e.g. train=0.8,val=0.2"),
    )),
    Source("cityscapes", "segdist.prepare.sources.cityscapes",
           "Cityscapes leftImg8bit + gtFine or gtCoarse labelIds (19 trainIds)", (
        option("--root", required=True),
        option("--split", required=True, choices=["train", "val", "test", "train_extra"]),
        option("--annotations", choices=["gtFine", "gtCoarse"], default="gtFine",
               help="the label folder; train_extra has gtCoarse only"),
        option("--image-format", choices=["png", "jpeg"], default="png"),
    )),
    Source("voc", "segdist.prepare.sources.voc", "Pascal VOC 2012 (21 classes), with SBD's train_aug by --sbd", (
        option("--root", required=True, help="VOCdevkit/VOC2012: JPEGImages/, SegmentationClass/, ImageSets/"),
        option("--split", required=True, choices=["train", "val", "trainval"]),
        option("--sbd", default=None, help="SBD's benchmark_RELEASE/dataset (cls/*.mat, train.txt, val.txt): "
                                           "--split train becomes train_aug (10,582 images)"),
    )),
    Source("ade20k", "segdist.prepare.sources.ade20k", "ADE20K (ADEChallengeData2016, 150 classes; 0 -> ignore)", (
        option("--root", required=True, help="ADEChallengeData2016: images/ and annotations/"),
        option("--split", required=True, choices=["train", "val"]),
    )),
    Source("labelme", "segdist.prepare.sources.labelme", "LabelMe JSON files (polygons, rectangles, circles, lines)", (
        option("--root", required=True, help="the folder of <stem>.json files (and their images)"),
        option("--classes", required=True, help=CLASSES_HELP + "; 0 = background, the first name is 1"),
        option("--split", default="train"),
        option("--list", dest="list_file", default=None, help=LIST_HELP),
        option("--recursive", action="store_true", help="also the JSON files in subfolders"),
        option("--line-width", type=positive, default=10, help="pixels of line and linestrip shapes (labelme's 10)"),
        option("--unknown-to-ignore", action="store_true", help="shapes of labels not in --classes -> ignore pixels "
                                                                "(default: left out and counted)"),
    )),
    Source("folder", "segdist.prepare.sources.folder", "image folder + mask folder paired by stem or relative path", (
        option("--images", required=True),
        option("--masks", required=True),
        option("--classes", required=True, help=CLASSES_HELP + "; mask value = position"),
        option("--split", default="train"),
        option("--list", dest="list_file", default=None, help=LIST_HELP),
        option("--recursive", action="store_true", help=RECURSIVE_HELP),
        option("--source-ignore", type=int, action="append", default=None,
               help="mask value meaning 'ignore' in the source (repeatable)"),
        option("--reduce-zero-label", action="store_true", help="0 -> ignore, v -> v-1 (ADE20K-style masks)"),
        option("--map", dest="value_map", default=None,
               help='JSON {"source value": class name, index or "ignore"}: only these values are known'),
        option("--unknown-to-ignore", action="store_true", help=UNKNOWN_HELP),
        option("--palette", default=None, help="JSON colours per class, for RGB/RGBA masks"),
        option("--mask-suffix", default="", help="mask stem = image stem + this"),
    )),
)}


def source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown prepare source '{name}'; the sources are {sorted(SOURCES)}") from None
