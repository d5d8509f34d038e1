"""Predictions in the Cityscapes benchmark's result format: one labelIds PNG per frame, named after it.

cityscapesScripts' `evalPixelLevelSemanticLabeling` (and the test server, on the submitted zip)
finds the prediction for ground truth `<city>_<seq>_<frame>_gtFine_labelIds.png` by searching the
results folder recursively for `<city>_<seq>_<frame>*.png`; it must be a single-channel 8-bit
image of the label's size holding official labelIds (road = 7, ..., bicycle = 33), not trainIds.
segdist writes `<city>_<seq>_<frame>_leftImg8bit.png`: the input's name with a .png suffix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.cityscapes_labels import CLASSES, LABELS
from segdist.format.manifest import IGNORE_INDEX
from segdist.utils.files import safe_file_name
from segdist.utils.viz import save_png

FORMATS = ("segdist", "cityscapes")
RESULT_SUFFIX = "_leftImg8bit.png"
# <city>_<seq>_<frame>: what the evaluator matches; city names hold no "_" (e.g. bad-honnef)
FRAME = re.compile(r"^[^_/]+_\d{6}_\d{6}")


def train_id_to_label_id() -> np.ndarray:
    """256-entry lookup table: trainId 0..18 -> official labelId; 255 marks values that are no train class."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for _, label_id, train_id, _ in LABELS:
        if train_id != IGNORE_INDEX:
            lut[train_id] = label_id
    return lut


TRAIN_TO_LABEL_ID = train_id_to_label_id()


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """A trainId map as the uint8 labelIds map the benchmark reads; refuses ids that are no train class."""
    if train_ids.size and (train_ids.min() < 0 or train_ids.max() >= len(CLASSES)):
        bad = sorted(set(np.unique(train_ids).tolist()) - set(range(len(CLASSES))))
        raise ValueError(f"class ids {bad[:5]} are not Cityscapes trainIds 0..{len(CLASSES) - 1}")
    return TRAIN_TO_LABEL_ID[train_ids.astype(np.intp)]


def check_format(output_format: str) -> None:
    """Refuse an output format that is not one of FORMATS."""
    if output_format not in FORMATS:
        raise DataError(f"format '{output_format}' is not valid; choose one of {', '.join(FORMATS)}")


def check_cityscapes_dataset(manifest: dict, where: Path | str, split: str | None = None) -> None:
    """Refuse a dataset that `segdist prepare cityscapes` did not write with the 19 train classes."""
    if manifest.get("classes") != CLASSES or manifest.get("ignore_index") != IGNORE_INDEX:
        raise DataError(f"{where}: --format cityscapes needs a dataset of the 19 Cityscapes train classes "
                        f"(segdist prepare cityscapes); this one has classes {manifest.get('classes')}")
    splits = manifest.get("splits", {})
    names = [split] if split else list(splits)
    types = {name: splits.get(name, {}).get("source", {}).get("type") for name in names}
    if not types or any(kind != "cityscapes" for kind in types.values()):
        raise DataError(f"{where}: --format cityscapes needs Cityscapes data written by `segdist prepare "
                        f"cityscapes`; the source of {', '.join(f'{n}={t}' for n, t in types.items()) or 'no split'} "
                        "is not cityscapes")


def result_name(frame: str) -> str | None:
    """The result file name for a sample key or input stem, or None when it names no Cityscapes frame."""
    match = FRAME.match(frame)
    return f"{match.group(0)}{RESULT_SUFFIX}" if match else None


def write_label_ids(train_ids: np.ndarray, path: Path) -> None:
    """Write the labelIds PNG of a trainId map atomically (temporary name without .png, then rename)."""
    save_png(to_label_ids(train_ids), path)


class ResultWriter:
    """Writes each scored prediction of `segdist evaluate` as `out/<key>_leftImg8bit.png` (any process).

    Samples whose key names no Cityscapes frame are not written but kept in `unnamed`.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self.unnamed: list[str] = []

    def __call__(self, key: str, prediction) -> None:  # noqa: ANN001 (a torch tensor of trainIds)
        name = result_name(key)
        if name is None:
            self.unnamed.append(key)
            return
        write_label_ids(prediction.cpu().numpy(), self.out / safe_file_name(name))  # the key is data
        self.written += 1


def stray_results(out: Path, written: int) -> int:
    """How many more PNG files `out` holds than this evaluation wrote (stale results the evaluator may match)."""
    return max(0, sum(1 for _ in Path(out).rglob("*.png")) - written)
