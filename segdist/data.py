"""Shard readers for training and evaluation.

Sharding across processes and DataLoader workers is decided here and only here:
- training: batch i of epoch e on process `rank` is batch i // S of the stream seeded by
  (seed, e, rank, s = i % S), S = max(1, loader workers); each stream resamples shards with
  replacement and shuffles. A batch is thus a pure function of its position: every process runs
  exactly `steps_per_epoch` batches whatever the shard layout, one DataLoader (and its workers)
  serves the whole run, and a resumed run gets exactly the batches an uninterrupted one would.
- evaluation: the split's samples are cut into equal contiguous ranges, one per
  (process, worker) slot; each slot reads only its own bytes, and every sample is seen once.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from segdist import faults, storage
from segdist.augment import CorruptSample, Normalizer, augment, decode, eval_transform, to_tensors, train_transform
from segdist.config import DataConfig
from segdist.manifest import MANIFEST, read_manifest, shard_paths
from segdist.sources.common import DataError
from segdist.tarstream import Reader, Skips, range_samples, resampled_samples, slot_ranges
from segdist.workers import Loader

__all__ = ["DatasetInfo", "Normalizer", "load_dataset_info", "normalization", "train_loader", "eval_loader",
           "steps_per_epoch", "split_names"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUMMED_STATS = ("samples", "class_pixels", "class_images", "class_image_pixels")
# Why data could not be read, as counted in the loaders, summary.json and the trackers.
SKIP_REASONS = ("unavailable_shard", "truncated_shard", "incomplete_sample", "undecodable", "size_mismatch")


def split_names(value: str | list[str]) -> list[str]:
    """`data.train_split` as a list: 'train' or [train, val]."""
    return [value] if isinstance(value, str) else list(value)


@dataclass
class DatasetInfo:
    """What training needs from dataset.json; `root` is a directory or a URL prefix (see storage)."""

    root: Path | str
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def ignore_index(self) -> int:
        return self.manifest["ignore_index"]

    @property
    def palette(self) -> list[list[int]]:
        return self.manifest["palette"]

    def split(self, name: str) -> dict:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.root} has no split '{name}'; it has {sorted(self.manifest['splits'])}")
        return self.manifest["splits"][name]

    def combined(self, names: str | list[str]) -> dict:
        """Sample count and class statistics summed over one or several splits (train+val training)."""
        records = [self.split(name) for name in split_names(names)]
        return {key: _summed([r[key] for r in records]) for key in SUMMED_STATS}

    def shards(self, names: str | list[str]) -> tuple[list[str], list[dict]]:
        """Shard locations and manifest records of one or several splits, checked to hold samples."""
        urls, records = [], []
        for name in split_names(names):
            if not self.split(name)["samples"]:
                raise DataError(f"{self.root}: split '{name}' has no samples")
            if storage.is_local(self.root):
                urls += [str(p) for p in shard_paths(Path(self.root), self.manifest, name)]
            else:  # remote: a missing shard shows when it is read (retried, then counted)
                urls += [storage.join(self.root, s["name"]) for s in self.split(name)["shards"]]
            records += self.split(name)["shards"]
        return urls, records


def _summed(values: list) -> int | list:
    if isinstance(values[0], list):
        return np.sum(np.asarray(values, np.int64), axis=0).tolist()
    return int(sum(values))


def load_dataset_info(shards: str | Path) -> DatasetInfo:
    """The manifest of a prepared dataset: a local directory or a remote prefix (http(s)://, s3://, pipe:)."""
    if storage.is_local(shards):
        root = storage.urls.local_path(shards)
        if not root.is_dir():
            raise DataError(f"data.shards: {root} is not a directory; run `segdist prepare ... --out {root}` first")
        return DatasetInfo(root, read_manifest(root))
    url = storage.join(shards, MANIFEST)
    try:
        return DatasetInfo(str(shards), storage.read_json(url))
    except (OSError, ValueError) as exc:
        raise DataError(f"data.shards: cannot read {url}: {exc}") from None


def normalization(cfg: DataConfig, info: DatasetInfo) -> tuple[tuple, tuple]:
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(info.manifest["mean"]), tuple(info.manifest["std"])


def stream_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python hash randomisation)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def steps_per_epoch(cfg: DataConfig, info: DatasetInfo, world_size: int) -> int:
    samples = cfg.epoch_samples or info.combined(cfg.train_split)["samples"]
    return max(1, math.ceil(samples / (world_size * cfg.batch_size)))


def repeat_factors(stats: dict, threshold: float) -> np.ndarray:
    """Per-class repeat factor max(1, sqrt(t / f_c)), f_c = share of images holding class c (LVIS RFS)."""
    freq = np.asarray(stats["class_images"], np.float64) / max(stats["samples"], 1)
    with np.errstate(divide="ignore"):
        return np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / freq)), 1.0)


class TrainBatches(IterableDataset):
    """Training batches [start, end) of one process: (uint8 images, labels, skips since the last batch)."""

    def __init__(self, cfg: DataConfig, info: DatasetInfo, *, seed: int, rank: int, world_size: int,
                 start: int, end: int):
        self.cfg, self.seed, self.rank, self.start, self.end = cfg, seed, rank, start, end
        urls, records = info.shards(cfg.train_split)
        self.shards = [(url, record["samples"]) for url, record in zip(urls, records)]
        self.reader = Reader.from_config(cfg)
        self.ignore_index = info.ignore_index
        self.per_epoch = steps_per_epoch(cfg, info, world_size)
        self.streams = max(1, cfg.workers)
        stats = info.combined(cfg.train_split)
        self.factors = repeat_factors(stats, cfg.balance_threshold) if cfg.class_balanced else None

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[tuple]:
        worker, workers = _worker()
        if workers != self.streams:
            raise RuntimeError(f"TrainBatches expects {self.streams} loader workers, got {workers}")
        position = self.start + worker  # this worker serves every `workers`-th batch of the run
        while position < self.end:
            epoch, index = divmod(position, self.per_epoch)
            stream = self._stream(epoch, index % workers, first=index // workers)
            while position < self.end and position // self.per_epoch == epoch:
                faults.at_step(position)
                faults.hit("loader")
                yield next(stream)
                position += workers

    def _stream(self, epoch: int, stream: int, first: int) -> Iterator[tuple]:
        """Batches first, first+1, ... of stream (seed, epoch, rank, stream)."""
        seed = stream_seed(self.seed, epoch, self.rank, stream)
        skips = Skips()
        decoded = _decodable(enumerate(self.sample_order(seed, skips)), skips)
        batch = self.cfg.batch_size
        for _ in itertools.islice(decoded, first * batch):  # resuming: skip without augmenting
            pass
        transform = train_transform(self.cfg, self.ignore_index)
        while True:
            items = [augment(transform, image, label, seed, index) for index, image, label
                     in itertools.islice(decoded, batch)]
            images, labels = zip(*items)
            yield torch.stack(images), torch.stack(labels), skips.take()

    def sample_order(self, seed: int, skips: Skips) -> Iterator[dict]:
        """The undecoded samples of the stream seeded by `seed`, in training order (endless)."""
        rng = random.Random(seed)
        samples = resampled_samples(self.shards, rng, skips, self.reader)
        if self.factors is not None:
            samples = self._repeat(samples, rng)
        return _shuffle(samples, self.cfg.shuffle_buffer, rng)

    def _repeat(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        """Repeat-factor sampling: an image comes back r times on average, r from its rarest class."""
        for sample in samples:
            try:
                classes = json.loads(sample["json"])["classes"]
            except (KeyError, ValueError):
                classes = []  # decode() counts the broken sample
            factor = max((self.factors[c] for c in classes), default=1.0)
            for _ in range(int(factor) + (rng.random() < factor - int(factor))):
                yield sample


def _shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer of `size` samples (random.Random-driven, so the order is seeded)."""
    buffer: list = list(itertools.islice(samples, max(1, size)))
    for sample in samples:
        i = rng.randrange(len(buffer))
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def _decodable(samples: Iterator[tuple[int, dict]], skips: Skips) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index in the shuffled stream, image, label) of the samples that decode; the others are counted."""
    for index, sample in samples:
        try:
            yield (index, *decode(sample))
        except CorruptSample as exc:
            skips[exc.reason] += 1


def train_loader(cfg: DataConfig, info: DatasetInfo, *, seed: int, rank: int, world_size: int, start: int = 0,
                 end: int | None = None) -> Loader:
    """Batches start..end-1 of this process's training stream (default: one epoch from `start`)."""
    if end is None:
        end = start + steps_per_epoch(cfg, info, world_size)
    batches = TrainBatches(cfg, info, seed=seed, rank=rank, world_size=world_size, start=start, end=end)
    return Loader(batches, batch_size=None, num_workers=cfg.workers, persistent_workers=False,
                  generator=torch.Generator())  # leaves the global RNG (saved in checkpoints) untouched


class EvalStream(IterableDataset):
    """Every sample of a split exactly once across all (process, worker) slots, each reading only its share.

    Yields (image, label, key, None), or (None, None, what, reason) for each sample it could not read.
    """

    def __init__(self, info: DatasetInfo, split: str, size: int | None, rank: int, world_size: int,
                 reader: Reader):
        self.urls, self.records = info.shards(split)
        self.size, self.rank, self.world_size, self.reader = size, rank, world_size, reader

    def __iter__(self) -> Iterator[tuple]:
        worker, workers = _worker()
        ranges = slot_ranges(self.urls, self.records, self.rank * workers + worker, self.world_size * workers)
        transform, skips = eval_transform(self.size), Skips()
        for item in range_samples(ranges, skips, self.reader):
            if isinstance(item, int):  # a shard range broke off: that many samples were not read
                taken = skips.take()
                reason = next(iter(taken["skipped"]), "truncated_shard")
                for k in range(item):
                    yield None, None, f"{next(iter(taken['unavailable']), 'a shard')} (sample {k + 1} of {item} lost)", \
                        reason
                continue
            try:
                image, label = decode(item)
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
    stream = EvalStream(info, split, size, rank, world_size, Reader.from_config(cfg))
    return Loader(stream, batch_size=batch_size or cfg.val_batch_size,
                  num_workers=cfg.workers if workers is None else workers, collate_fn=pad_collate,
                  generator=torch.Generator())
