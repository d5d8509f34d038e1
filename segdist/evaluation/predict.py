"""`segdist predict`: class-id, colour and overlay images for image files, each at its file's own size.

For every readable input `OUT/index/<stem>.png` (class ids), `OUT/color/<stem>.png` (the
dataset palette) and `OUT/overlay/<stem>.jpg`; with `output_format="cityscapes"` instead one
Cityscapes labelIds PNG `OUT/<city>_<seq>_<frame>_leftImg8bit.png` for the benchmark's test
server (see cityscapes_results). Images are read by DataLoader workers and
predicted in batches (equal sizes share a forward pass) on the GPU when there is one.
Unreadable files are skipped, listed at the end, and never stop the others.
"""

from __future__ import annotations

import glob
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from segdist.data.augment import eval_input
from segdist.data.workers import Loader
from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import check_cityscapes_dataset, check_format, result_name, write_label_ids
from segdist.models.inference import NO_TTA, TTA, check_mode
from segdist.runs.run import Run, load_run
from segdist.utils.files import safe_file_name
from segdist.utils.images import DEFAULT_MAX_PIXELS, TooManyPixels, decode_rgb
from segdist.utils.viz import colorize, overlay, save_jpeg, save_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Loaded:
    """One input file: its original RGB pixels and the resized uint8 CHW tensor, or why it could not be read."""

    path: Path
    rgb: np.ndarray | None = None
    image: torch.Tensor | None = None
    error: str | None = None


class ImageFiles(Dataset):
    """Decodes image files (any failure becomes `Loaded.error`) and resizes them as validation does."""

    def __init__(self, paths: Sequence[Path], eval_size: int | None, side: str = "long",
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths, self.eval_size, self.side, self.max_pixels = list(paths), eval_size, side, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Loaded:
        path = self.paths[index]
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as exc:
            return Loaded(path, error=f"cannot read the file ({exc.strerror or exc})")
        if not data.size:
            return Loaded(path, error="empty file")
        try:
            rgb = decode_rgb(data, max_pixels=self.max_pixels)  # the stored grid: EXIF orientation not applied
        except TooManyPixels as exc:  # decoding it would take the memory of its full-size class scores too
            return Loaded(path, error=f"{exc}: skipped before decoding")
        except cv2.error as exc:  # e.g. a header announcing more pixels than OpenCV accepts
            return Loaded(path, error=f"OpenCV refuses it ({str(exc).strip().splitlines()[-1]})")
        if rgb is None:
            return Loaded(path, error="not a decodable image")
        return Loaded(path, rgb, eval_input(rgb, self.eval_size, self.side))


def find_images(spec: str) -> list[Path]:
    """A file, the image files of a folder, or the image files a glob matches; sorted, stems unique."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    else:
        candidates = path.iterdir() if path.is_dir() else map(Path, glob.glob(spec, recursive=True))
        files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) at '{spec}'")
    clashes = [stem for stem, n in Counter(p.stem for p in files).items() if n > 1]
    if clashes:
        raise DataError(f"several inputs share the file stem(s) {clashes[:5]}; their outputs would overwrite each "
                        "other: predict them into separate --out folders")
    return files


def predict(run_dir: str | Path, inputs: str, out: str | Path, *, checkpoint: str = "best", mode: str = "whole",
            crop: Sequence[int] | None = None, stride: Sequence[int] | None = None, tta: TTA = NO_TTA,
            batch_size: int = 4, workers: int | None = None, output_format: str = "segdist",
            max_pixels: int | None = None) -> dict:
    """Predict every image `inputs` names; returns {"written": [paths], "skipped": [(path, reason)]}."""
    check_mode(mode, crop, stride)
    check_format(output_format)
    files = find_images(inputs)
    inputs_found = len(files)
    run = load_run(run_dir, checkpoint)
    unnamed = []  # (path, reason) of inputs the Cityscapes format cannot name
    if output_format == "cityscapes":
        check_cityscapes_dataset(run.manifest, run.dir / "dataset.json")
        files, unnamed = cityscapes_inputs(files)
    write = WRITERS[output_format]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    for folder in OUTPUT_FOLDERS[output_format]:
        (out / folder).mkdir(parents=True, exist_ok=True)
    workers = run.config.data.workers if workers is None else workers
    written, skipped = [], []
    precision = run.config.train.mixed_precision
    print(f"predicting {len(files)} image(s) with {run.checkpoint} on {device}, mode {mode}, TTA {tta}, "
          f"precision {precision}")
    images = ImageFiles(files, run.eval_size, run.resize_side, max_pixels or run.config.data.max_pixels)
    with Loader(images, batch_size=batch_size, num_workers=min(workers, len(files)), collate_fn=list) as loader, \
            tqdm(total=len(files), desc="predict", unit="img", dynamic_ncols=True) as bar:
        for batch in loader:
            readable = [item for item in batch if item.error is None]
            skipped += [(str(item.path), item.error) for item in batch if item.error is not None]
            classes = run.classify([item.image for item in readable], [item.rgb.shape[:2] for item in readable],
                                   device, mode=mode, crop=crop, stride=stride, tta=tta)
            for item, labels in zip(readable, classes):
                write(item, labels, run, out)
                written.append(str(item.path))
            bar.update(len(batch))
    print(f"wrote {len(written)} prediction(s) to " + WHERE[output_format].format(out=out))
    if unnamed:
        print(f"skipped {len(unnamed)} file(s) whose name holds no Cityscapes frame <city>_<seq>_<frame>:\n"
              + "\n".join(f"  {p}" for p, _ in unnamed))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):\n" + "\n".join(f"  {p}: {why}" for p, why in skipped))
    if not written:
        raise DataError(f"none of the {inputs_found} input file(s) could be read")
    return {"written": written, "skipped": unnamed + skipped}


def cityscapes_inputs(files: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The inputs that name a Cityscapes frame, and the others as (path, reason); two for one frame is an error."""
    named = [path for path in files if result_name(path.stem)]
    clashes = [name for name, n in Counter(result_name(p.stem) for p in named).items() if n > 1]
    if clashes:
        raise DataError(f"several inputs name the same Cityscapes frame(s) {clashes[:5]}; the benchmark takes one "
                        "prediction per frame")
    unnamed = [(str(p), "its name holds no Cityscapes frame <city>_<seq>_<frame>") for p in files
               if not result_name(p.stem)]
    return named, unnamed


def write_prediction(item: Loaded, labels: np.ndarray, run: Run, out: Path) -> None:
    """Index PNG (uint8, uint16 past 256 classes), palette colours and an overlay JPEG, named by the input's stem."""
    labels = labels.astype(np.uint8 if run.num_classes <= 256 else np.uint16)
    colour = colorize(labels, run.palette, run.ignore_index)
    save_png(labels, out / "index" / safe_file_name(item.path.stem, ".png"))
    save_png(colour, out / "color" / safe_file_name(item.path.stem, ".png"))
    save_jpeg(overlay(item.rgb, colour, labels), out / "overlay" / safe_file_name(item.path.stem, ".jpg"))


def write_cityscapes(item: Loaded, labels: np.ndarray, run: Run, out: Path) -> None:  # noqa: ARG001
    """The benchmark's labelIds PNG, named after the input's frame."""
    write_label_ids(labels, out / safe_file_name(result_name(item.path.stem)))


WRITERS = {"segdist": write_prediction, "cityscapes": write_cityscapes}
OUTPUT_FOLDERS = {"segdist": ("index", "color", "overlay"), "cityscapes": ("",)}
WHERE = {"segdist": "{out}/index (class ids), {out}/color, {out}/overlay",
         "cityscapes": "{out} (Cityscapes labelIds, for the benchmark)"}
