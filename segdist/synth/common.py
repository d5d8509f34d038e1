"""What both synthetic generators share: split sizes, size checks and one random stream per image."""

from __future__ import annotations

import numpy as np

_SPLIT_CODES = {"train": 0, "val": 1}


def split_counts(images: int, val_images: int | None) -> dict[str, int]:
    if images < 0:
        raise ValueError(f"images must be >= 0, got {images}")
    val = max(1, images // 4) if val_images is None else val_images
    if val < 0:
        raise ValueError(f"val_images must be >= 0, got {val}")
    return {"train": images, "val": val}


def check_size(width: int, height: int) -> None:
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, index), so an image never depends on the others."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])
