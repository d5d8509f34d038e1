"""`segdist show`: image | mask | overlay panels of a split's first samples, read as training reads them."""

from __future__ import annotations

from pathlib import Path

from segdist.data.augment import CorruptSample, decode
from segdist.data.info import load_dataset_info
from segdist.data.tar_reader import Reader, ShardRange, Skips, range_samples
from segdist.errors import DataError
from segdist.utils.viz import colorize, overlay, panel, save_png


def show(shards: str | Path, split: str, out: str | Path, n: int = 8) -> int:
    """Write the first `n` samples of `split` as PNG panels into `out`; returns how many were written.

    `shards` is a dataset directory or a URL prefix, as for training.
    """
    info = load_dataset_info(shards)
    urls, records = info.shards(split)
    ranges = [ShardRange(url, 0, record["samples"]) for url, record in zip(urls, records)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, skips = 0, Skips()
    for sample in range_samples(ranges, skips, Reader()):
        if written >= n:
            break
        if isinstance(sample, int):  # a shard broke off: `sample` samples could not be read
            continue
        try:
            rgb, label = decode(sample)  # the stored pixel grid, as the label
        except CorruptSample as exc:
            raise DataError(str(exc)) from None
        colour = colorize(label, info.palette, info.ignore_index)
        save_png(panel(rgb, colour, overlay(rgb, colour, label)), out / f"{sample['__key__']}.png")
        written += 1
    unread = skips.take()
    print(f"wrote {written} image | mask | overlay panels to {out}"
          + (f" (could not read: {unread['skipped']})" if unread["skipped"] else ""))
    return written
