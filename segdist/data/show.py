"""`segdist show`: image | mask | overlay panels of a split's first samples, read as training reads them."""

from __future__ import annotations

from pathlib import Path

from segdist.data.augment import CorruptSample, decode
from segdist.data.info import load_dataset_info
from segdist.data.tar_reader import Reader, ShardRange, Skips, range_samples
from segdist.utils.files import safe_file_name
from segdist.utils.images import DEFAULT_MAX_PIXELS
from segdist.utils.viz import colorize, overlay, panel, save_png


def show(shards: str | Path, split: str, out: str | Path, n: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Write the first `n` samples of `split` as PNG panels into `out`; returns how many were written.

    `shards` is a dataset directory or a URL prefix, as for training. A sample that cannot be used
    (over `max_pixels`, undecodable) is skipped and named.
    """
    info = load_dataset_info(shards)
    urls, records = info.shards(split)
    ranges = [ShardRange(url, 0, record["samples"]) for url, record in zip(urls, records)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, skips = 0, Skips()
    for sample in range_samples(ranges, skips, Reader(expected=info.digests())):
        if written >= n:
            break
        if isinstance(sample, int):  # a shard broke off: `sample` samples could not be read
            continue
        try:
            rgb, label = decode(sample, max_pixels)  # the stored pixel grid, as the label
        except CorruptSample as exc:
            print(f"skipped {exc}", flush=True)
            continue
        colour = colorize(label, info.palette, info.ignore_index)
        # the key is a tar member's name (data): `../x` or `/x` must not leave `out`
        save_png(panel(rgb, colour, overlay(rgb, colour, label)), out / safe_file_name(sample["__key__"], ".png"))
        written += 1
    unread = skips.take()
    print(f"wrote {written} image | mask | overlay panels to {out}"
          + (f" (could not read: {unread['skipped']})" if unread["skipped"] else ""))
    return written
