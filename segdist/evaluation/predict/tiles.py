"""`segdist predict --tile H W --overlap P`: an image of any size predicted band by band, its files written row by row.

The windows are `--mode slide --crop H W --stride H-P W-P`'s (models/tiled.py: the same logits, float for
float), at the image's stored resolution (the run's data.val_size is not applied). Memory held, whatever
the image's height: one window row of summed logits (H x W_image x classes float32; twice with TTA flip),
the image rows under it (tile_inputs.py), and the finished rows on their way to the files (tile_outputs.py).
Outputs are index and color only: overlay (JPEG, at most 65,535 pixels a side) and probs (C x H x W in one
.npz) cannot be bounded and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from segdist.errors import DataError
from segdist.evaluation.predict.destination import Destination
from segdist.evaluation.predict.inputs import SampleInput
from segdist.evaluation.predict.outputs import OutputPlan
from segdist.evaluation.predict.reading import InputImages, Loaded
from segdist.evaluation.predict.tile_inputs import open_rows
from segdist.evaluation.predict.tile_outputs import WRITERS, StreamedFile, tiled_files
from segdist.models.inference import TTA, argmax, autocast
from segdist.models.tiled import band_probabilities
from segdist.runs.run import Run
from segdist.utils.viz import colorize

TILE_OUTPUTS = ("index", "color")


def check_tiles(tile: Sequence[int], overlap: int, mode: str, tta: TTA, plan: OutputPlan) -> None:
    """Refuse what --tile cannot do, with the reason."""
    if len(tile) != 2 or min(tile) < 1 or not 0 <= overlap < min(tile):
        raise DataError(f"--tile {' '.join(map(str, tile))} --overlap {overlap}: give H W >= 1 and 0 <= overlap < "
                        "min(H, W)")
    if mode != "whole":
        raise DataError("--tile H W --overlap P already is --mode slide --crop H W --stride H-P W-P: leave out "
                        "--mode, --crop and --stride")
    if tta.scales != (1.0,):
        raise DataError("--tile supports --tta flip only: other scales would resize the whole image")
    refused = [o for o in plan.outputs if o not in TILE_OUTPUTS] if plan.output_format == "segdist" else ["labelIds"]
    if refused:
        raise DataError(f"--tile writes index and color only ({', '.join(refused)} cannot be written with bounded "
                        "memory: overlay is one JPEG, probs one C x H x W array, cityscapes images are small)")


def grid(tile: Sequence[int], overlap: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(crop, stride) of the slide mode --tile H W --overlap P equals."""
    return (tile[0], tile[1]), (tile[0] - overlap, tile[1] - overlap)


@torch.no_grad()
def predict_tiled(run: Run, item: Loaded, destination: Destination, device: torch.device, tile: Sequence[int],
                  overlap: int, tta: TTA, max_pixels: int) -> str | None:
    """Predict the image `item.source` window row by window row and write its files as its rows are finished;
    None, or why the image could not be read (it is skipped, as unreadable inputs are)."""
    try:
        source = open_rows(item.source, max_pixels)
    except (OSError, ValueError) as exc:  # DataError, TooManyPixels and tifffile's TiffFileError are ValueErrors
        return f"cannot read it ({exc})"
    try:
        size = (source.height, source.width)
        model, normalize = run.model_on(device), run.normalizer().to(device)

        def rows(top: int, bottom: int) -> torch.Tensor:
            block = torch.from_numpy(np.ascontiguousarray(source.read(top, bottom).transpose(2, 0, 1)))
            return normalize(block[None].to(device))

        crop, stride = grid(tile, overlap)
        with ExitStack() as stack, autocast(device, run.config.train.mixed_precision):
            writers = open_writers(stack, destination, tiled_files(item.files, size), size, run)
            for probs in band_probabilities(model, rows, size, crop, stride, flip=tta.flip):
                write_rows(writers, argmax(probs).cpu().numpy(), run)
            for writer in writers.values():
                writer.close()
    finally:
        source.close()
    return None


def open_writers(stack: ExitStack, destination: Destination, files: dict[str, str], size: tuple[int, int],
                 run: Run) -> dict[str, StreamedFile]:
    """{output: writer} of each file, each written to a temporary path published when `stack` closes cleanly."""
    writers = {}
    for output, relative in files.items():
        path = stack.enter_context(destination.writing(relative))
        channels, dtype = (3, np.uint8) if output == "color" else (1, label_dtype(run))
        writers[output] = WRITERS[Path(relative).suffix](path, *size, channels, dtype)
        stack.callback(writers[output].abort)  # an error: the encoder stops before its file is removed
    return writers


def label_dtype(run: Run) -> type:
    return np.uint8 if run.num_classes <= 256 else np.uint16


def write_rows(writers: dict[str, StreamedFile], labels: np.ndarray, run: Run) -> None:
    """Hand finished rows of class ids (and their colours) to the writers."""
    labels = labels.astype(label_dtype(run))
    for output, writer in writers.items():
        writer.write(colorize(labels, run.palette, run.ignore_index) if output == "color" else labels)


class TiledInputs(InputImages):
    """This process's inputs for --tile: done ones passed over, the others only named (predict_tiled reads them)."""

    def __getitem__(self, index: int) -> Loaded:
        item = self.items[index]
        if isinstance(item, SampleInput):
            return Loaded(item.where, error="--tile reads image files, not the samples of --shards")
        loaded = self.to_write(item.where, item.name)
        loaded.source = item.url if loaded.files else None
        return loaded
