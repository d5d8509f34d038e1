"""Running statistics of a shard or a split (class pixels, images, channel sums, skips).

A split's tally is the sum of its shards' tallies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

MAX_SKIPPED_EXAMPLES = 50  # skipped inputs listed with their file and problem, per shard and per split


@dataclass
class Encoded:
    """A converted sample, ready for the tar file, plus its statistics."""

    key: str
    files: dict[str, bytes]
    class_pixels: np.ndarray
    ignore_pixels: int
    channel_sum: np.ndarray
    channel_sumsq: np.ndarray
    pixels: int


@dataclass
class Tally:
    """Running statistics of a shard or a split; the sum of its shards' tallies gives a split's."""

    num_classes: int
    samples: int = 0
    class_pixels: np.ndarray = None
    class_images: np.ndarray = None
    class_image_pixels: np.ndarray = None
    ignore_pixels: int = 0
    pixels: int = 0
    channel_sum: np.ndarray = None
    channel_sumsq: np.ndarray = None
    skipped: Counter = field(default_factory=Counter)
    skipped_details: list = field(default_factory=list)  # [key, reason, detail], at most MAX_SKIPPED_EXAMPLES

    def __post_init__(self) -> None:
        c = self.num_classes
        for name, size in (("class_pixels", c), ("class_images", c), ("class_image_pixels", c)):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(size, np.int64))
        if self.channel_sum is None:
            self.channel_sum = np.zeros(3, np.float64)
            self.channel_sumsq = np.zeros(3, np.float64)

    def add(self, s: Encoded) -> None:
        present = s.class_pixels > 0
        labelled = int(s.class_pixels.sum())
        self.samples += 1
        self.class_pixels += s.class_pixels
        self.class_images += present
        self.class_image_pixels += present * labelled
        self.ignore_pixels += s.ignore_pixels
        self.pixels += s.pixels
        self.channel_sum += s.channel_sum
        self.channel_sumsq += s.channel_sumsq

    def skip(self, key: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_details) < MAX_SKIPPED_EXAMPLES:
            self.skipped_details.append([key, reason, detail])

    def merge(self, other: Tally) -> None:
        for name in ("samples", "ignore_pixels", "pixels"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("class_pixels", "class_images", "class_image_pixels", "channel_sum", "channel_sumsq"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.skipped.update(other.skipped)
        room = MAX_SKIPPED_EXAMPLES - len(self.skipped_details)
        self.skipped_details += other.skipped_details[: max(room, 0)]

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "class_pixels": self.class_pixels.tolist(),
            "class_images": self.class_images.tolist(),
            "class_image_pixels": self.class_image_pixels.tolist(),
            "ignore_pixels": self.ignore_pixels,
            "pixels": self.pixels,
            "channel_sum": self.channel_sum.tolist(),
            "channel_sumsq": self.channel_sumsq.tolist(),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_details": self.skipped_details,
        }

    @classmethod
    def from_json(cls, num_classes: int, d: dict) -> Tally:
        arrays = {k: np.array(d[k], np.int64) for k in ("class_pixels", "class_images", "class_image_pixels")}
        floats = {k: np.array(d[k], np.float64) for k in ("channel_sum", "channel_sumsq")}
        return cls(
            num_classes, d["samples"], **arrays, ignore_pixels=d["ignore_pixels"], pixels=d["pixels"],
            **floats, skipped=Counter(d["skipped"]), skipped_details=list(d["skipped_details"]),
        )

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Channel mean and std of the images, in the 0..1 scale albumentations' Normalize uses."""
        if not self.pixels:
            return [0.0] * 3, [0.0] * 3
        mean = self.channel_sum / self.pixels
        std = np.sqrt(np.maximum(self.channel_sumsq / self.pixels - mean**2, 0))
        return [round(float(v) / 255, 6) for v in mean], [round(float(v) / 255, 6) for v in std]
