"""Pascal VOC 2012 segmentation (21 classes, 255 = the border to ignore), and SBD's `train_aug`.

    VOC2012/JPEGImages/<stem>.jpg              all 17,125 images, labelled or not
    VOC2012/SegmentationClass/<stem>.png       palette PNGs: index 0..20, 255 on object borders
    VOC2012/ImageSets/Segmentation/<split>.txt the stems of train (1,464), val (1,449), trainval (2,913)

`--sbd DIR` (SBD's benchmark_RELEASE/dataset: cls/<stem>.mat, train.txt, val.txt) makes `--split
train` the widely used train_aug, as MMSegmentation's voc_aug converter builds it:

    train_aug = (VOC train | SBD train | SBD val) - VOC val          10,582 stems on the full sets

A stem with a VOC mask takes it (it marks borders as 255); the others take SBD's `GTcls.Segmentation`
(scipy's loadmat), which has no border label. Images come from JPEGImages (SBD's img/ as a fallback).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import label_dtype
from segdist.prepare.inputs import DEFAULT_MAX_PIXELS, Sample, SkipSample, decoder_errors, read_image
from segdist.prepare.jobs import PrepareJob, label_options, read_stem_list
from segdist.prepare.label_values import ValueMap
from segdist.prepare.sources import folder
from segdist.prepare.sources.folder import FolderOptions, FolderSpec
from segdist.utils.viz import default_palette

CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
BORDER = 255  # VOC's "void" value: object borders and difficult regions


def job(root: str | Path, split: str, *, sbd: str | Path | None = None, ignore_index: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS, shard_size: int = 256, shard_bytes: int | None = None) -> PrepareJob:
    """What `segdist prepare voc` will write: a split's images with their masks (train_aug with `sbd`)."""
    root = Path(root)
    lists = root / "ImageSets" / "Segmentation"
    if not (root / "JPEGImages").is_dir() or not lists.is_dir():
        raise DataError(f"{root} is not a VOC2012 folder (expected JPEGImages/ and ImageSets/Segmentation/)")
    if sbd is not None and split != "train":
        raise DataError(f"--sbd builds train_aug (SBD train+val and VOC train, minus VOC val): use it with "
                        f"--split train, not {split}")
    stems = read_stem_list(lists / f"{split}.txt")
    if sbd is not None:
        stems = train_aug(stems, read_stem_list(lists / "val.txt"), Path(sbd))
    specs = [_spec(stem, root.resolve(), Path(sbd).resolve() if sbd else None, lists / f"{split}.txt")
             for stem in stems]
    common = label_options(len(CLASSES), ignore_index, max_pixels)
    values = ValueMap(len(CLASSES), common["ignore_index"], source_ignore=(BORDER,))
    opts = FolderOptions(values, max_pixels=common["max_pixels"], source="voc")
    source = {"type": "voc", "root": str(root), "split": split, "sbd": str(sbd) if sbd else None,
              "max_pixels": opts.max_pixels}
    return PrepareJob({split: specs}, partial(convert, opts=opts), CLASSES, default_palette(len(CLASSES)),
                      opts.ignore_index, source, shard_size, shard_bytes)


def sbd_dir(sbd: Path) -> Path:
    """SBD's dataset folder: `sbd` itself or its dataset/ (benchmark_RELEASE/ was given)."""
    for candidate in (sbd, sbd / "dataset"):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
            return candidate
    raise DataError(f"{sbd} is not SBD's dataset folder (expected cls/*.mat, train.txt and val.txt)")


def train_aug(voc_train: list[str], voc_val: list[str], sbd: Path) -> list[str]:
    """(VOC train | SBD train | SBD val) - VOC val, sorted."""
    sbd = sbd_dir(sbd)
    sbd_stems = read_stem_list(sbd / "train.txt") + read_stem_list(sbd / "val.txt")
    return sorted((set(voc_train) | set(sbd_stems)) - set(voc_val))


def _spec(stem: str, root: Path, sbd: Path | None, list_file: Path) -> FolderSpec:
    """A listed stem's image and mask (a VOC PNG, else with `sbd` an SBD .mat); a missing file is an error."""
    image = root / "JPEGImages" / f"{stem}.jpg"
    mask = root / "SegmentationClass" / f"{stem}.png"
    if sbd is not None and not mask.is_file():
        mask = sbd_dir(sbd) / "cls" / f"{stem}.mat"
        image = image if image.is_file() else sbd_dir(sbd) / "img" / f"{stem}.jpg"
    for what, path in (("image", image), ("mask", mask)):
        if not path.is_file():
            raise DataError(f"'{stem}' (listed in {list_file}{' or SBD' if sbd else ''}) has no {what}: {path} "
                            "does not exist")
    return FolderSpec(folder.key_of(stem), str(image), str(mask))


def read_sbd_mask(path: Path) -> np.ndarray:
    """SBD's class mask: GTcls.Segmentation of a cls/*.mat file (scipy's loadmat)."""
    from scipy.io import loadmat

    with decoder_errors("corrupt_mask", path):
        data = loadmat(str(path))
    try:
        values = np.asarray(data["GTcls"]["Segmentation"][0, 0])
    except (KeyError, IndexError, ValueError, TypeError):
        raise SkipSample("corrupt_mask", f"{path}: not an SBD cls file (no GTcls.Segmentation)") from None
    if values.ndim != 2 or values.dtype.kind not in "ui":
        raise SkipSample("corrupt_mask", f"{path}: GTcls.Segmentation is {values.dtype} {values.shape}, not a 2-D "
                                         "integer mask")
    return values


def convert(spec: FolderSpec, opts: FolderOptions) -> Sample:
    """Worker side: VOC PNGs as the folder source reads them; SBD .mat masks through loadmat."""
    if not spec.mask_path.endswith(".mat"):
        return folder.convert(spec, opts)
    image = read_image(Path(spec.image_path), max_pixels=opts.max_pixels)
    values = read_sbd_mask(Path(spec.mask_path))
    folder.check_size(values.shape, image.width, image.height, spec.mask_path)
    label = opts.values.apply(values, spec.mask_path).astype(label_dtype(opts.num_classes, opts.ignore_index))
    meta = {"source": "sbd", "id": Path(spec.image_path).stem, "file": Path(spec.image_path).name}
    return Sample(spec.key, image.data, image.ext, image.mean, image.std, label, meta)
