"""Whole-image, sliding-window and test-time-augmented inference: normalised images in, class probabilities out.

- `whole`: one forward pass per image, padded (bottom/right, zeros = the normalisation mean)
  up to a multiple of 32 and cropped back.
- `slide`: overlapping crop x crop windows every stride pixels, the last one aligned to the
  image's end (MMSegmentation's `slide_inference`); logits are averaged where windows overlap.
  An image smaller than the window is padded up to it first.
- TTA: the image at every scale, optionally also flipped left-right; each view's logits are
  brought back to the input size and the softmax probabilities averaged (MMSegmentation's
  `SegTTAModel`).

`infer` works on a batch of equally sized images; `infer_each` takes images of any sizes and
batches the equal ones, so a prediction never depends on what else is in its batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("whole", "slide")
SIZE_DIVISOR = 32  # every segdist model needs H and W divisible by 32
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: image scales (relative to the input) and whether to add flipped views."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __str__(self) -> str:
        parts = [] if self.scales == (1.0,) else ["scales=" + ",".join(f"{s:g}" for s in self.scales)]
        if self.flip:
            parts.append("flip")
        return ",".join(parts) or "none"

    @property
    def views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)


NO_TTA = TTA()


def parse_tta(text: str | None) -> TTA:
    """'none', 'flip', 'scales=0.5,0.75,1.0' or 'scales=0.5,1.0,1.5,flip'."""
    if text is None or text == "none":
        return NO_TTA
    if text == "flip":
        return TTA(flip=True)
    if not text.startswith("scales="):
        raise ValueError(f"TTA '{text}' is not valid; use flip, scales=0.5,0.75,1.0 or scales=0.5,1.0,flip")
    items = text.removeprefix("scales=").split(",")
    flip = items[-1] == "flip"
    try:
        scales = tuple(float(s) for s in (items[:-1] if flip else items))
    except ValueError:
        raise ValueError(f"TTA '{text}': scales must be numbers, optionally followed by ',flip'") from None
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"TTA '{text}': give at least one scale, all above 0")
    return TTA(scales, flip)


def check_mode(mode: str, crop: Sequence[int] | None, stride: Sequence[int] | None) -> None:
    """Refuse option combinations `infer` cannot honour, with the reason."""
    if mode not in MODES:
        raise ValueError(f"mode '{mode}' is not valid; choose one of {', '.join(MODES)}")
    if mode == "whole":
        if crop is not None or stride is not None:
            raise ValueError("--crop and --stride belong to --mode slide")
        return
    if crop is None or stride is None:
        raise ValueError("--mode slide needs --crop H W and --stride H W")
    if len(crop) != 2 or len(stride) != 2 or min(*crop, *stride) < 1:
        raise ValueError(f"crop {list(crop)} and stride {list(stride)} must be two positive integers each (H W)")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ValueError(f"stride {list(stride)} larger than crop {list(crop)} would leave pixels no window covers")


@torch.no_grad()
def infer(model: torch.nn.Module, images: Tensor, mode: str = "whole", *, crop: Sequence[int] | None = None,
          stride: Sequence[int] | None = None, tta: TTA = NO_TTA) -> Tensor:
    """Class probabilities [N, C, H, W] (float32) for normalised images [N, 3, H, W] of one size."""
    check_mode(mode, crop, stride)
    size = tuple(images.shape[-2:])
    total = None
    for scale in tta.scales:
        scaled = images if scale == 1.0 else _resize(images, _scaled_size(size, scale))
        for flip in (False, True) if tta.flip else (False,):
            view = scaled.flip(-1) if flip else scaled
            logits = slide_logits(model, view, crop, stride) if mode == "slide" else padded_logits(model, view)
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = _resize(logits, size)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total.add_(probs)
    if tta.views > 1:
        total /= tta.views
    return total


def infer_each(model: torch.nn.Module, images: Sequence[Tensor], mode: str = "whole", **options) -> list[Tensor]:
    """`infer` for images [3, H, W] of any sizes: equally sized ones share a forward pass."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[tuple(image.shape[-2:])].append(i)
    out: list[Tensor] = [None] * len(images)  # type: ignore[list-item]
    for indices in groups.values():
        probs = infer(model, torch.stack([images[i] for i in indices]), mode, **options)
        for i, p in zip(indices, probs):
            out[i] = p
    return out


def probs_at(probs: Tensor, size: Sequence[int]) -> Tensor:
    """Probabilities [C, H, W] at `size` from [C, h, w]: resized bilinearly when sizes differ (still summing to 1)."""
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = _resize(probs[None], tuple(size))[0]
    return probs


def argmax(probs: Tensor) -> Tensor:
    """Class ids [H, W] of probabilities [C, H, W]; the first class on ties."""
    # max().indices == argmax (first index on ties), and 4x faster on CPU over the leading dim
    return probs.max(dim=0).indices


def labels_at(probs: Tensor, size: Sequence[int]) -> Tensor:
    """Class ids [H, W] at `size` from probabilities [C, h, w] (bilinear resize first when sizes differ)."""
    return argmax(probs_at(probs, size))


def padded_logits(model: torch.nn.Module, images: Tensor) -> Tensor:
    """One forward pass, the input zero-padded bottom/right to a multiple of 32, logits cropped back.

    The logits are float32 from here on whatever precision the model ran in (autocast), so every
    caller (validation, evaluate, predict) resizes and averages them the same way.
    """
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % SIZE_DIVISOR, -w % SIZE_DIVISOR
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    return model(images)[..., :h, :w].float()


def slide_logits(model: torch.nn.Module, images: Tensor, crop: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Logits from overlapping windows, averaged over the windows covering each pixel."""
    h, w = images.shape[-2:]
    crop_h, crop_w = crop
    # An image smaller than the window is padded up to it, so every pass sees a full window.
    pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    height, width = images.shape[-2:]
    summed = None
    count = images.new_zeros(1, 1, height, width)
    for top in window_starts(height, crop_h, stride[0]):
        for left in window_starts(width, crop_w, stride[1]):
            logits = padded_logits(model, images[..., top : top + crop_h, left : left + crop_w])
            if summed is None:
                summed = logits.new_zeros(images.shape[0], logits.shape[1], height, width)
            summed[..., top : top + crop_h, left : left + crop_w] += logits
            count[..., top : top + crop_h, left : left + crop_w] += 1
    return (summed / count)[..., :h, :w]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets every `stride` along `length` (>= window), the last one aligned to the end."""
    steps = max(length - window + stride - 1, 0) // stride + 1
    return [min(i * stride, length - window) for i in range(steps)]


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def autocast(device: torch.device, precision: str | None):  # noqa: ANN201
    """The autocast context for `precision` ('no', 'bf16', 'fp16'; None: not set, so fp32) on `device`."""
    if precision in (None, "no"):
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
