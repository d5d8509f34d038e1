"""Sliding windows over an image of any height, one band of rows at a time, holding one window row of logits.

The windows, their order and each pixel's sum are those of `inference.slide_logits` (MMSegmentation's
`slide_inference`: row-major, the last window aligned to the image's edge, logits summed, then divided by
the count; an image smaller than the window padded up to it), so every pixel's averaged logits are the same
floats. Only the band under the current window row is held (window height x padded width x classes,
float32, per view): rows above the next window row's top get no more windows, so they are divided, turned
into probabilities and handed out (FINISH_ROWS at a time), and the band moves down.

The probabilities can differ from `infer(..., mode="slide")`'s in the last bit: PyTorch's CPU softmax
splits a tensor's pixels into vector lanes and a scalar tail per thread chunk, and a block of rows is split
elsewhere than the whole image (measured: 7 of 56,287 pixels, 3e-8 apart). A class id changes only where
two classes' probabilities tie to that bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segdist.models.inference import padded_logits, window_starts

FINISH_ROWS = 32  # finished rows are averaged and softmaxed this many at a time: a few temporaries of this size
RowReader = Callable[[int, int], Tensor]  # (top, bottom) -> normalised rows [1, 3, bottom - top, W] on the device


class Band:
    """The summed logits and window counts of one window row's image rows (`rows` x `width`), in one view."""

    def __init__(self, rows: int, width: int):
        self.rows, self.width = rows, width
        self.summed: Tensor | None = None  # [1, C, rows, width]: C is known after the first window
        self.count: Tensor | None = None

    def add(self, model: torch.nn.Module, image: Tensor, lefts: Sequence[int], window: int) -> None:
        """Add the logits of the windows at `lefts` of `image` [1, 3, rows, width], in order, as slide_logits does."""
        for left in lefts:
            logits = padded_logits(model, image[..., left : left + window])
            if self.summed is None:
                self.summed = zeros((1, logits.shape[1], self.rows, self.width), logits.device)
                self.count = zeros((1, 1, self.rows, self.width), logits.device)
            self.summed[..., left : left + window] += logits
            self.count[..., left : left + window] += 1

    def average(self, first: int, last: int) -> Tensor:
        """The averaged logits [1, C, last - first, width] of the band's rows [first, last)."""
        return self.summed[..., first:last, :] / self.count[..., first:last, :]

    def shift(self, rows: int) -> None:
        """Start the band `rows` lower: its first rows are done, the new ones at the bottom are zero."""
        for held in (self.summed, self.count):
            held[..., : self.rows - rows, :] = held[..., rows:, :].clone()
            held[..., self.rows - rows :, :] = 0


def zeros(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """A float32 zero tensor; on the CPU allocated by numpy, so tracemalloc sees (and the tests bound) the band."""
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, np.float32))
    return torch.zeros(shape, device=device)


@torch.no_grad()
def band_probabilities(model: torch.nn.Module, rows: RowReader, size: tuple[int, int], crop: Sequence[int],
                       stride: Sequence[int], flip: bool = False) -> Iterator[Tensor]:
    """Class probabilities [C, r, W] (float32) of consecutive row blocks covering an image of `size`, top down.

    `rows(top, bottom)` gives the normalised image rows; `flip` adds the left-right flipped view and
    averages the two softmaxes (TTA flip, as `infer`).
    """
    h, w = size
    height, width = max(h, crop[0]), max(w, crop[1])
    tops = window_starts(height, crop[0], stride[0])
    lefts = window_starts(width, crop[1], stride[1])
    views = {False: Band(crop[0], width), **({True: Band(crop[0], width)} if flip else {})}
    for i, top in enumerate(tops):
        end = tops[i + 1] if i + 1 < len(tops) else height  # rows above the next window row are finished
        image = rows(top, min(top + crop[0], h))
        for flipped, band in views.items():
            view = image.flip(-1) if flipped else image
            band.add(model, F.pad(view, (0, width - w, 0, crop[0] - view.shape[-2])), lefts, crop[1])
        finished = min(end, h) - top
        for first in range(0, finished, FINISH_ROWS):
            yield finish(views, first, min(first + FINISH_ROWS, finished), w)
        for band in views.values():
            band.shift(end - top)


def finish(views: dict[bool, Band], first: int, last: int, w: int) -> Tensor:
    """Probabilities [C, last - first, w] of the band's rows [first, last): each view's softmax, averaged (`infer`)."""
    probs = None
    for flipped, band in views.items():
        logits = band.average(first, last)[..., :w]
        if flipped:
            logits = logits.flip(-1)
        view_probs = logits.float().softmax(dim=1)
        probs = view_probs if probs is None else probs.add_(view_probs)
    if len(views) > 1:
        probs /= len(views)
    return probs[0]
