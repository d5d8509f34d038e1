"""The inputs of one process, read by DataLoader workers: done ones passed over, the others decoded and resized.

An input is done when every file it should get is already under --out (destination.py: a file
under its final name is whole). Files and URLs are checked before they are read; a shard sample
once read, since its key names it. Whatever cannot be read or decoded becomes `Loaded.error`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segdist import storage
from segdist.data.augment import eval_input
from segdist.data.tar_reader import Reader, ShardRange, Skips, range_samples
from segdist.evaluation.predict.inputs import Input, SampleInput
from segdist.evaluation.predict.outputs import OutputPlan
from segdist.utils.images import DEFAULT_MAX_PIXELS, TooManyPixels, decode_rgb
from segdist.utils.secrets import redact


@dataclass
class Loaded:
    """One input: where it is, its name, the files still to write ({output: relative path}), and then its
    pixels (the original RGB and the resized uint8 CHW tensor) or why it was not read."""

    where: str
    name: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    unnamed: bool = False  # the output format cannot name it (no Cityscapes frame)
    rgb: np.ndarray | None = None
    image: torch.Tensor | None = None
    error: str | None = None
    source: str | None = None  # --tile: the file, read band by band as it is predicted (tiles.py)

    @property
    def ready(self) -> bool:
        return self.image is not None or self.source is not None


class InputImages(Dataset):
    """This process's inputs, each read, checked against `existing` outputs, decoded and resized as validation does."""

    def __init__(self, items: Sequence[Input], plan: OutputPlan, existing: set[str], reader: Reader,
                 eval_size: int | None, side: str = "long", max_pixels: int = DEFAULT_MAX_PIXELS):
        self.items, self.plan, self.existing, self.reader = list(items), plan, existing, reader
        self.eval_size, self.side, self.max_pixels = eval_size, side, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Loaded:
        return self.load(self.items[index])

    def load(self, item: Input) -> Loaded:
        """One input, read and decoded unless done (also Ray's decode tasks: ray_pipeline.py)."""
        if isinstance(item, SampleInput):
            return self.sample(item)
        loaded = self.to_write(item.where, item.name)
        if loaded.files:
            try:
                data = read_file(item.url, self.reader)
            except OSError as exc:  # storage's ShardUnavailable too, after its retries
                loaded.error = f"cannot read the file ({exc.strerror or redact(exc)})"
            else:
                self.decode(loaded, data)
        return loaded

    def to_write(self, where: str, name: str) -> Loaded:
        """The input named `name` with the files it still needs (none: done)."""
        files = self.plan.files(name)
        if files is None:
            return Loaded(where, name, unnamed=True)
        return Loaded(where, name, {out: path for out, path in files.items() if path not in self.existing})

    def sample(self, item: SampleInput) -> Loaded:
        """A shard sample: read, named by its key, then decoded unless done."""
        skips = Skips()
        span = ShardRange(item.shard, item.index, item.index + 1, item.start, item.end, item.exact)
        found = [s for s in range_samples([span], skips, self.reader) if isinstance(s, dict)]
        if not found:
            return Loaded(item.where, error=f"could not be read ({', '.join(sorted(skips)) or 'not found'})")
        key = found[0]["__key__"]
        loaded = self.to_write(f"{redact(item.shard)}: sample {key}", key)
        data = found[0].get("jpg") or found[0].get("png")
        if loaded.files and data is None:
            loaded.error = "the sample holds no jpg or png image"
        elif loaded.files:
            self.decode(loaded, np.frombuffer(data, np.uint8))
        return loaded

    def decode(self, loaded: Loaded, data: np.ndarray) -> None:
        """Fill in the pixels of `data`, or the reason there are none."""
        rgb, error = decoded(data, self.max_pixels)
        if error is not None:
            loaded.error = error
        else:
            loaded.rgb, loaded.image = rgb, eval_input(rgb, self.eval_size, self.side)


def read_file(url: str, reader: Reader) -> np.ndarray:
    """The bytes of a local file or a URL (with the reader's retries)."""
    if storage.is_local(url):
        return np.fromfile(storage.urls.local_path(url), np.uint8)
    return np.frombuffer(storage.read_bytes(url, retry=reader.retry), np.uint8)


def decoded(data: np.ndarray, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """The RGB pixels of an image file's bytes on their stored grid (EXIF orientation not applied), or why not."""
    if not data.size:
        return None, "empty file"
    try:
        rgb = decode_rgb(data, max_pixels=max_pixels)
    except TooManyPixels as exc:  # decoding it would take the memory of its full-size class scores too
        return None, f"{exc}: skipped before decoding"
    except cv2.error as exc:  # e.g. a header announcing more pixels than OpenCV accepts
        return None, f"OpenCV refuses it ({str(exc).strip().splitlines()[-1]})"
    return (rgb, None) if rgb is not None else (None, "not a decodable image")
