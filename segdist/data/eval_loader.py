"""The evaluation loader: every sample of a split exactly once across all (process, worker) slots.

The split's samples are cut into equal contiguous ranges, one per slot; with the per-sample byte
offsets in dataset.json each slot reads only its own bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

from segdist.config import DataConfig
from segdist.data.augment import CorruptSample, decode, eval_transform, to_tensors
from segdist.data.info import DatasetInfo
from segdist.data.tar_reader import Reader, Skips, range_samples, slot_ranges
from segdist.data.workers import Loader, worker_slot
from segdist.utils.images import DEFAULT_MAX_PIXELS


class EvalStream(IterableDataset):
    """Every sample of a split exactly once across all (process, worker) slots, each reading only its share.

    Yields (image, label, key, None), or (None, None, what, reason) for each sample it could not read.
    """

    def __init__(self, info: DatasetInfo, split: str, size: int | None, rank: int, world_size: int,
                 reader: Reader, side: str = "long", max_pixels: int = DEFAULT_MAX_PIXELS):
        self.urls, self.records = info.shards(split)
        self.size, self.rank, self.world_size, self.reader, self.side = size, rank, world_size, reader, side
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[tuple]:
        worker, workers = worker_slot()
        ranges = slot_ranges(self.urls, self.records, self.rank * workers + worker, self.world_size * workers)
        transform, skips = eval_transform(self.size, self.side), Skips()
        for item in range_samples(ranges, skips, self.reader):
            if isinstance(item, int):  # a shard range broke off: that many samples were not read
                taken = skips.take()
                reason = next(iter(taken["skipped"]), "truncated_shard")
                shard = next(iter(taken["unavailable"]), "a shard")
                for k in range(item):
                    yield None, None, f"{shard} (sample {k + 1} of {item} lost)", reason
                continue
            try:
                image, label = decode(item, self.max_pixels)
            except CorruptSample as exc:
                yield None, None, item["__key__"], exc.reason
                continue
            image = transform(image=image)["image"]
            yield (*to_tensors(image, label), item["__key__"], None)


def pad_collate(batch: list, multiple: int = 32) -> dict:
    """Pad images (zeros) to a common size divisible by `multiple`; labels keep their own size.

    Samples that could not be read are left out and listed under "unreadable" as (key, reason).
    """
    good = [item for item in batch if item[0] is not None]
    out = {"images": None, "sizes": [], "labels": [], "keys": [],
           "unreadable": [(key, reason) for image, _, key, reason in batch if image is None]}
    if not good:
        return out
    h = math.ceil(max(img.shape[1] for img, *_ in good) / multiple) * multiple
    w = math.ceil(max(img.shape[2] for img, *_ in good) / multiple) * multiple
    images = torch.zeros(len(good), good[0][0].shape[0], h, w, dtype=good[0][0].dtype)
    for i, (img, *_) in enumerate(good):
        images[i, :, : img.shape[1], : img.shape[2]] = img
    out.update(images=images, sizes=[tuple(img.shape[1:]) for img, *_ in good],
               labels=[label for _, label, *_ in good], keys=[key for _, _, key, _ in good])
    return out


def eval_loader(cfg: DataConfig, info: DatasetInfo, split: str, *, rank: int, world_size: int,
                size: int | None = None, batch_size: int | None = None, workers: int | None = None) -> Loader:
    """Validation/evaluation batches: padded images, labels at their original resolution."""
    stream = EvalStream(info, split, size, rank, world_size, Reader.from_config(cfg, info.digests()),
                        cfg.resize_side, cfg.max_pixels)
    return Loader(stream, batch_size=batch_size or cfg.val_batch_size,
                  num_workers=cfg.workers if workers is None else workers, collate_fn=pad_collate,
                  generator=torch.Generator())
