"""A shard sample -> arrays -> augmented uint8 tensors; each sample's random draws fixed by its own seed.

Decoding keeps the stored pixel grid (segdist.utils.images). Augmentation is albumentations.

albumentations 2.0.8's `A.Compose(steps, seed=S)` seeds every child transform with the same S, so
transforms with the same probability fire together (hflip 0.5 + vflip 0.5 gave only "none" or
"both", a 180-degree turn). Here one shared generator pair drives all transforms of a sample, in
order, so their draws are independent; in training the pair is derived from (seed, epoch, the
sample's position in the epoch's order), so a sample gets the same crop and flip whatever the
number of processes and loader workers, and a resumed run needs to augment nothing before it.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch

from segdist.config import DataConfig
from segdist.utils.images import DEFAULT_MAX_PIXELS, TooManyPixels, decode_label, decode_rgb
from segdist.utils.secrets import redact


# why a sample is unusable: the training loop sums a fixed list of reasons over all ranks
CORRUPT_REASONS = ("incomplete_sample", "undecodable", "size_mismatch", "too_large")


class CorruptSample(Exception):
    """A shard sample that cannot be used; `reason` (one of CORRUPT_REASONS) is the name it is counted under."""

    def __init__(self, reason: str, detail: str):
        assert reason in CORRUPT_REASONS, reason  # a reason outside the list would be dropped from the counts
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode(sample: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Shard sample -> (RGB uint8 image, label map), both on the stored pixel grid.

    Images and labels over `max_pixels` (from their headers) are refused before they are decoded.
    """
    where = f"{redact(sample.get('__url__'))}: sample {sample.get('__key__')}"
    data = sample.get("jpg") or sample.get("png")
    if data is None or "seg.png" not in sample:
        raise CorruptSample("incomplete_sample", f"{where} lacks its image or seg.png")
    try:
        image, label = decode_rgb(data, max_pixels=max_pixels), decode_label(sample["seg.png"], max_pixels)
    except TooManyPixels as exc:
        raise CorruptSample("too_large", f"{where}: {exc}") from None
    except cv2.error as exc:
        raise CorruptSample("undecodable", f"{where}: {exc}") from None
    if image is None or label is None:
        raise CorruptSample("undecodable", f"{where} does not decode")
    if image.shape[:2] != label.shape[:2] or label.ndim != 2:
        raise CorruptSample("size_mismatch", f"{where}: image {image.shape[:2]}, label {label.shape}")
    return image, label


def train_transform(cfg: DataConfig, ignore_index: int, scale: float = 1.0) -> A.Compose:
    """Random scale + crop, flips, rotation, colour and blur (albumentations), on uint8 images.

    `scale` multiplies `data.scale_range` (a stage of `data.resize_schedule`).

    Normalisation happens after the batch reaches the device (`Normalizer`): workers ship uint8
    images and labels, 5x fewer bytes between processes than float32/int64 tensors.
    """
    h, w = cfg.crop_size
    lo, hi = (scale * s for s in cfg.scale_range)
    steps: list = [resize(cfg.base_size, cfg.resize_side)] if cfg.base_size else []
    steps += [
        A.RandomScale(scale_limit=(lo - 1, hi - 1), p=1.0),
        A.PadIfNeeded(h, w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
        CatMaxRatioCrop(h, w, cfg.cat_max_ratio, ignore_index) if cfg.cat_max_ratio else A.RandomCrop(h, w),
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
    ]
    if cfg.rotate:
        steps.append(A.Rotate(limit=cfg.rotate, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index,
                              p=0.5))
    if cfg.color_jitter:
        steps.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=cfg.color_jitter))
    if cfg.photometric:
        steps += photometric_distortion()
    if cfg.rgb_shift:
        steps.append(A.RGBShift(r_shift_limit=25, g_shift_limit=25, b_shift_limit=25, p=cfg.rgb_shift))
    if cfg.blur:
        steps.append(A.Blur(blur_limit=(3, 3), p=cfg.blur))
    return A.Compose(steps)


def photometric_distortion() -> list[A.BasicTransform]:
    """MMSegmentation's PhotoMetricDistortion set, each with p 0.5: brightness +-32, contrast and saturation
    x0.5-1.5, hue +-18 of OpenCV's 180 (a tenth of the circle)."""
    return [A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.5, p=0.5),
            A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=0.5),
            A.ColorJitter(brightness=0, contrast=0, saturation=0, hue=0.1, p=0.5)]


class CatMaxRatioCrop(A.RandomCrop):
    """MMSegmentation's RandomCrop with `cat_max_ratio`: up to `tries` crops are drawn, the first in which no class
    covers `ratio` or more of the labelled pixels is kept (else the last), so fewer crops are all road or sky."""

    def __init__(self, height: int, width: int, ratio: float, ignore_index: int, tries: int = 10):
        super().__init__(height, width)
        self.ratio, self.ignore_index, self.tries = ratio, ignore_index, tries

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        for _ in range(self.tries):
            drawn = super().get_params_dependent_on_data(params, data)
            x_min, y_min, x_max, y_max = drawn["crop_coords"]
            crop = data["mask"][y_min:y_max, x_min:x_max]
            counts = np.bincount(crop[crop != self.ignore_index].ravel())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < self.ratio * counts.sum():
                break
        return drawn


def resize(size: int, side: str = "long") -> A.BasicTransform:
    """Resize (aspect kept) so that the image's `side` ("long", or "short" as torchvision's references do) is `size`."""
    return A.SmallestMaxSize(max_size=size) if side == "short" else A.LongestMaxSize(max_size=size)


def eval_transform(size: int | None, side: str = "long") -> A.Compose:
    """Optional resize of the image's long or short `side` to `size` (`data.resize_side`); the label is not touched."""
    return A.Compose([resize(size, side)] if size else [])


def eval_input(rgb: np.ndarray, size: int | None, side: str = "long") -> torch.Tensor:
    """An RGB uint8 HxWx3 image as evaluation and prediction feed it: its `side` resized to `size`, uint8 CHW."""
    resized = eval_transform(size, side)(image=rgb)["image"]
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def seed_transform(transform: A.Compose, *entropy: int) -> None:
    """Give all of `transform`'s steps one shared generator pair, fixed by `entropy` (e.g. seed, epoch, position)."""
    numpy_seed, python_seed = np.random.SeedSequence([int(e) for e in entropy]).spawn(2)
    transform.set_random_state(np.random.default_rng(numpy_seed),
                               random.Random(int(python_seed.generate_state(1)[0])))


def augment(transform: A.Compose, image: np.ndarray, label: np.ndarray,
            *entropy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample augmented with the draws `entropy` fixes (training: its seed, epoch and position), as uint8 CHW
    image and label tensors."""
    seed_transform(transform, *entropy)
    out = transform(image=image, mask=label)
    return to_tensors(out["image"], out["mask"])


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 CHW image; uint8 label (int32 when ids need 16 bits). `Normalizer` makes them float/long."""
    if label.dtype != np.uint8:
        label = label.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(label)


class Normalizer(torch.nn.Module):
    """uint8 image batch -> normalised float on its device."""

    def __init__(self, mean: tuple, std: tuple):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std
