"""The training loader: every process's batches as a pure function of their position in the run.

Batch i of epoch e on process `rank` is batch i // S of the stream seeded by (seed, e, rank,
s = i % S), S = max(1, loader workers); each stream resamples shards with replacement and
shuffles. Every process thus runs exactly `steps_per_epoch` batches whatever the shard layout,
one DataLoader (and its workers) serves the whole run, and a resumed run gets exactly the batches
an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from segdist.config import DataConfig
from segdist.data.augment import CorruptSample, augment, decode, train_transform
from segdist.data.info import DatasetInfo
from segdist.data.tar_reader import Reader, Skips, resampled_samples
from segdist.data.workers import Loader, worker_slot
from segdist.utils import faults

# Why data could not be read, as counted in the loaders, summary.json and the trackers.
SKIP_REASONS = ("unavailable_shard", "truncated_shard", "incomplete_sample", "undecodable", "size_mismatch")


def stream_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python hash randomisation)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


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
        worker, workers = worker_slot()
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
