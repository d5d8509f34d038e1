"""The files `segdist predict` writes for one input, named by its stem, and their bytes.

Format `segdist`, any of `--outputs index,color,overlay,probs` (default the first three):

    index/<stem>.png     class ids (uint8; uint16 past 256 classes), at the image's size
    color/<stem>.png     the dataset palette's colours (ignore white)
    overlay/<stem>.jpg   the colours blended over the image where the class is not 0
    probs/<stem>.npz     per-class softmax probabilities at the image's size (TTA-averaged as the index)

A probs file holds `probs` [C, H, W] (uint8 with `--probs-dtype uint8`, the default: the
probability times 255, rounded; float16 with `--probs-dtype float16`), `scale` (1/255 or 1: the
probability is `probs * scale`) and `classes` (the C class names):

    >>> with np.load("OUT/probs/photo.npz") as f:
    ...     probs = f["probs"].astype(np.float32) * f["scale"]     # [C, H, W], summing to ~1 per pixel
    ...     classes = list(f["classes"])
    >>> probs.argmax(0)          # the index PNG, except where rounding ties two classes

Format `cityscapes`: one labelIds PNG `<city>_<seq>_<frame>_leftImg8bit.png` (see cityscapes_results).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import check_format, result_name, to_label_ids
from segdist.runs.run import Run
from segdist.utils.files import safe_file_name
from segdist.utils.viz import colorize, overlay

OUTPUTS = ("index", "color", "overlay", "probs")
DEFAULT_OUTPUTS = ("index", "color", "overlay")
PROBS_DTYPES = ("uint8", "float16")
SUFFIXES = {"index": ".png", "color": ".png", "overlay": ".jpg", "probs": ".npz"}
LABEL_IDS = "labelIds"  # the one output of the cityscapes format
WHERE = {"index": "{out}/index (class ids)", "color": "{out}/color", "overlay": "{out}/overlay",
         "probs": "{out}/probs (class probabilities)", LABEL_IDS: "{out} (Cityscapes labelIds, for the benchmark)"}


@dataclass(frozen=True)
class OutputPlan:
    """Which files each input gets: the format, the outputs of the segdist format and the probabilities' dtype."""

    output_format: str = "segdist"
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    probs_dtype: str = "uint8"

    @classmethod
    def of(cls, output_format: str, outputs: Sequence[str] | str | None, probs_dtype: str) -> OutputPlan:
        """A checked plan; `outputs` a list or a comma-separated string (None: the default)."""
        check_format(output_format)
        if isinstance(outputs, str):
            outputs = [o.strip() for o in outputs.split(",") if o.strip()]
        if output_format == "cityscapes":
            if outputs is not None and tuple(outputs) != (LABEL_IDS,):
                raise DataError("--outputs belongs to --format segdist; --format cityscapes writes labelIds PNGs")
            return cls(output_format, (LABEL_IDS,), probs_dtype)
        outputs = tuple(dict.fromkeys(outputs or DEFAULT_OUTPUTS))
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown or not outputs:
            raise DataError(f"--outputs {','.join(outputs)}: choose among {','.join(OUTPUTS)}")
        if probs_dtype not in PROBS_DTYPES:
            raise DataError(f"--probs-dtype {probs_dtype}: choose one of {', '.join(PROBS_DTYPES)}")
        return cls(output_format, outputs, probs_dtype)

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders of --out the files go to ('' for --out itself)."""
        return ("",) if self.output_format == "cityscapes" else self.outputs

    @property
    def wants_probs(self) -> bool:
        return "probs" in self.outputs

    def files(self, name: str) -> dict[str, str] | None:
        """{output: path relative to --out} of the input named `name`; None when the format cannot name it."""
        if self.output_format == "cityscapes":
            frame = result_name(name)
            return None if frame is None else {LABEL_IDS: safe_file_name(frame)}
        return {out: f"{out}/{safe_file_name(name, SUFFIXES[out])}" for out in self.outputs}

    def where(self, out: str) -> str:
        return ", ".join(WHERE[o].format(out=out) for o in self.outputs)

    def quantized(self, probs: torch.Tensor) -> np.ndarray:
        """Probabilities [C, H, W] as stored: uint8 (x255, rounded) or float16, converted on their device."""
        if self.probs_dtype == "uint8":
            return (probs * 255).round_().to(torch.uint8).cpu().numpy()
        return probs.half().cpu().numpy()


def encoded(outputs: Sequence[str], rgb: np.ndarray, labels: np.ndarray, probs: np.ndarray | None,
            run: Run) -> Iterator[tuple[str, bytes]]:
    """(output, file bytes) for each of `outputs`, one at a time, of an image's RGB, class ids and probabilities."""
    labels = labels.astype(np.uint8 if run.num_classes <= 256 else np.uint16)
    colour = colorize(labels, run.palette, run.ignore_index) if {"color", "overlay"} & set(outputs) else None
    for output in outputs:
        if output == "index":
            yield output, image_bytes(labels, "PNG")
        elif output == "color":
            yield output, image_bytes(colour, "PNG")
        elif output == "overlay":
            yield output, image_bytes(overlay(rgb, colour, labels), "JPEG", quality=90)
        elif output == "probs":
            yield output, probs_bytes(probs, run.classes)
        else:
            yield output, image_bytes(to_label_ids(labels), "PNG")


def image_bytes(array: np.ndarray, image_format: str, **options) -> bytes:
    """An image file's bytes, encoded by PIL as utils.viz.save_png / save_jpeg write them."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def probs_bytes(probs: np.ndarray, classes: Sequence[str]) -> bytes:
    """A compressed .npz of `probs` [C, H, W], its `scale` to probabilities and the `classes` (no pickled objects)."""
    buffer = io.BytesIO()
    scale = np.float32(1 / 255 if probs.dtype == np.uint8 else 1)
    np.savez_compressed(buffer, probs=probs, scale=scale, classes=np.array(classes, dtype=str))
    return buffer.getvalue()
