"""Remote reading (issue 12, item 6): shards over HTTP vs a folder of files over HTTP.

A local HTTP server (tests/servers.py) adds `--latency` (default 5 ms) to every request, as an
object store does, and serves the same synthetic COCO samples two ways: `folder/images/*.jpg` +
`folder/masks/*.png`, and `shards/` (tar shards of 64 + dataset.json, from `segdist prepare`).

Baseline: `HTTPFolderDataset`, a map-style Dataset that GETs each image and each mask with its
own request (the way a hand-made pipeline reads a bucket), decodes with segdist.images, applies
segdist's albumentations pipeline and ships uint8 tensors, in a DataLoader with the same workers
and batch size as segdist's. Both sides normalise in the consuming process (counted).

Measured:
  baseline   HTTPFolderDataset, 2 requests per sample
  segdist    `segdist.data.train_loader.train_loader` with `data.shards=<http URL>` and the node prefetcher,
             from an empty node cache: whole shards downloaded ahead over kept-alive connections

    python benchmarks/remote.py [--images 300] [--workers 2] [--batch 8] [--latency 0.005]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the HTTP server the tests use

from servers import FaultyServer  # noqa: E402


def images_per_second(batches: Iterable, limit: int,
                      prepare: Callable = lambda images, labels: (images, labels)) -> float:
    """Images per second of any iterable of (images, labels) batches, over `limit` images.

    The first batch (worker start-up, first connections) is left out for every pipeline alike.
    """
    count, start = 0, None
    for images, labels in batches:
        images, labels = prepare(images, labels)
        if start is None:
            start = time.perf_counter()
            continue
        count += images.shape[0]
        if count >= limit:
            break
    if start is None or count == 0:
        raise RuntimeError("the pipeline gave fewer than two batches")
    return count / (time.perf_counter() - start)


def make_dataset(work: Path, images: int) -> list[str]:
    """Synthetic COCO -> `segdist prepare` shards in work/shards, the same samples as files in work/folder."""
    import webdataset as wds

    from segdist.cli import main
    from segdist.synth.coco import write_synthetic_coco

    write_synthetic_coco(work / "raw", images, val_images=1, seed=0)
    main(["prepare", "coco", "--images", str(work / "raw/train"), "--annotations",
          str(work / "raw/annotations/instances_train.json"), "--classes", "person,bicycle,car",
          "--out", str(work / "shards"), "--keep-empty", "--shard-size", "64"])
    (work / "folder/images").mkdir(parents=True)
    (work / "folder/masks").mkdir()
    keys = []
    for sample in wds.WebDataset(sorted(str(p) for p in (work / "shards").glob("train-*.tar")), shardshuffle=False):
        (work / "folder/images" / f"{sample['__key__']}.jpg").write_bytes(sample["jpg"])
        (work / "folder/masks" / f"{sample['__key__']}.png").write_bytes(sample["seg.png"])
        keys.append(sample["__key__"])
    return keys


def fetch(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class HTTPFolderDataset(Dataset):
    """The baseline: one GET for the image and one for the mask of every sample."""

    def __init__(self, base_url: str, keys: list[str], transform):
        self.base_url, self.keys, self.transform = base_url, keys, transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        from segdist.data.augment import to_tensors
        from segdist.utils.images import decode_label, decode_rgb

        key = self.keys[index]
        image = decode_rgb(fetch(f"{self.base_url}/folder/images/{key}.jpg"))
        label = decode_label(fetch(f"{self.base_url}/folder/masks/{key}.png"))
        out = self.transform(image=image, mask=label)
        return to_tensors(out["image"], out["mask"])


def segdist_batches(cfg, info):  # noqa: ANN001, ANN201
    """segdist's own training loader reading the shards from the HTTP server, with the node prefetcher
    training starts: (images, labels) batches."""
    from segdist.data.plan import Shape, plan_for
    from segdist.data.prefetch import node_prefetcher
    from segdist.data.tar_reader import Reader
    from segdist.data.train_loader import train_loader

    plan = plan_for(cfg, info, 0, Shape(cfg.batch_size, 1, 1))
    prefetcher = node_prefetcher(plan, Reader.from_config(cfg, info.digests()), 0, 0, 0)
    try:
        with train_loader(cfg, info, plan, rank=0, start=0, end=10**9) as loader:
            for n, (images, labels, _) in enumerate(loader):
                if prefetcher:
                    prefetcher.advance(n)
                yield images, labels
    finally:
        if prefetcher:
            prefetcher.close()


def bench(work: Path, keys: list[str], base_url: str, workers: int, batch: int, augment: dict) -> dict:
    """img/s of the baseline and of segdist's loader, same workers, batch and augmentation."""
    from segdist.config import DataConfig
    from segdist.data.augment import Normalizer, train_transform
    from segdist.data.info import load_dataset_info, normalization

    cfg = DataConfig(shards=f"{base_url}/shards", crop_size=[384, 384], batch_size=batch, workers=workers,
                     cache_dir=tempfile.mkdtemp(dir=work), **augment)  # a cold node cache: every shard downloaded
    info = load_dataset_info(cfg.shards)  # dataset.json and every shard come over HTTP
    normalize = Normalizer(*normalization(cfg, info))
    prepare = lambda images, labels: (normalize(images), labels.long())  # noqa: E731 - same for both pipelines
    limit = 2 * len(keys)
    folder = HTTPFolderDataset(base_url, keys, train_transform(cfg, info.ignore_index))
    sampler = torch.utils.data.RandomSampler(folder, replacement=True, num_samples=10**6)
    return {"baseline": images_per_second(DataLoader(folder, batch_size=batch, sampler=sampler, num_workers=workers,
                                                     drop_last=True), limit, prepare),
            "segdist": images_per_second(segdist_batches(cfg, info), limit, prepare)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.005, help="seconds added to every request")
    args = parser.parse_args()
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys = make_dataset(work, args.images)
        with FaultyServer(work, latency=args.latency) as server:
            runs = {label: bench(work, keys, server.url, args.workers, args.batch, augment) for label, augment in (
                ("random scale 0.5-2 + crop 384 + flip + colour jitter", dict(color_jitter=0.5)),
                ("plain crop 384", dict(scale_range=[1.0, 1.0], hflip=0.0)))}
            requests = len(server.log)
    print(f"\nremote reading, synthetic COCO 640x480 ({args.images} images), HTTP on 127.0.0.1 with "
          f"{args.latency * 1e3:g} ms per request, {args.workers} workers, batch {args.batch} "
          f"({requests} requests served in all):")
    for label, result in runs.items():
        base, ours = result["baseline"], result["segdist"]
        print(f"    {label:<52} folder over HTTP {base:7.1f} img/s   segdist shards over HTTP {ours:7.1f} img/s   "
              f"ratio {ours / base:.2f}x (target 3x)")


if __name__ == "__main__":
    sys.exit(main())
