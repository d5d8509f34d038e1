"""The shard readers: equal steps per process, every validation sample exactly once, balancing."""

from collections import Counter

import numpy as np
import pytest
import torch
from helpers import run_cli, square, write_coco

from segdist.config import DataConfig
from segdist.data.eval_loader import eval_loader
from segdist.data.info import load_dataset_info
from segdist.data.train_loader import repeat_factors, steps_per_epoch, train_loader


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ray_cluster):
    """37 images in shards of 5 (uneven); car is rare (every 9th image)."""
    root = tmp_path_factory.mktemp("data")
    n = 37
    images = [{"id": i, "width": 48, "height": 40} for i in range(1, n + 1)]
    anns = [{"image_id": i, "category_id": 3 if i % 9 == 0 else 1, "segmentation": square(4, 4, 30, 30)}
            for i in range(1, n + 1)]
    image_dir, ann_file = write_coco(root, images, anns)
    for split in ("train", "val"):
        run_cli("prepare", "coco", "--images", image_dir, "--annotations", ann_file, "--classes", "person,car",
                "--split", split, "--out", root / "shards", "--shard-size", "5")
    return load_dataset_info(root / "shards")


def _cfg(**kw) -> DataConfig:
    return DataConfig(crop_size=[32, 32], batch_size=3, val_batch_size=4, shuffle_buffer=8, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_process_runs_the_same_number_of_steps(dataset, workers):
    cfg = _cfg(workers=workers)
    for world in (1, 2, 3):
        expected = steps_per_epoch(cfg, dataset, world)
        assert expected == int(np.ceil(37 / (world * 3)))
        for rank in range(world):
            with train_loader(cfg, dataset, seed=0, rank=rank, world_size=world) as loader:
                batches = list(loader)
            assert len(batches) == expected
            images, labels, unread = batches[0]
            assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 32, 32)
            assert unread == {"skipped": {}, "retries": 0, "unavailable": {}}


def _batches(cfg, dataset, start, end, rank=0, world=2):
    with train_loader(cfg, dataset, seed=0, rank=rank, world_size=world, start=start, end=end) as loader:
        return [(images, labels) for images, labels, _ in loader]


def test_training_stream_is_fixed_by_seed_epoch_and_rank(dataset):
    cfg = _cfg(workers=1)
    per_epoch = steps_per_epoch(cfg, dataset, 2)

    def first(seed, epoch, rank):
        with train_loader(cfg, dataset, seed=seed, rank=rank, world_size=2, start=epoch * per_epoch) as loader:
            return next(iter(loader))[0]

    assert np.array_equal(first(0, 0, 0), first(0, 0, 0))
    assert not np.array_equal(first(0, 0, 0), first(0, 0, 1))
    assert not np.array_equal(first(0, 0, 0), first(0, 1, 0))
    assert not np.array_equal(first(0, 0, 0), first(1, 0, 0))


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_loader_started_at_any_batch_continues_the_uninterrupted_stream(dataset, workers):
    """Resuming mid-epoch (and across epochs) gives exactly the batches the run would have seen."""
    cfg = _cfg(workers=workers)
    per_epoch = steps_per_epoch(cfg, dataset, 2)  # 7: not a multiple of the worker counts
    end = 2 * per_epoch + 3
    whole = _batches(cfg, dataset, 0, end)
    assert len(whole) == end
    for start in (1, per_epoch - 1, per_epoch, per_epoch + 2):
        tail = _batches(cfg, dataset, start, end)
        assert len(tail) == end - start
        for (a, b), (c, d) in zip(whole[start:], tail):
            assert torch.equal(a, c) and torch.equal(b, d)


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 4), (2, 2, 3), (3, 1, 5)])
def test_validation_sees_every_sample_exactly_once(dataset, world, workers, batch):
    keys = Counter()
    for rank in range(world):
        for b in eval_loader(_cfg(workers=workers), dataset, "val", rank=rank, world_size=world, batch_size=batch):
            keys.update(b["keys"])
            for image, label, size in zip(b["images"], b["labels"], b["sizes"]):
                assert image.shape[1] % 32 == 0 and tuple(label.shape) == size == (40, 48)
    assert len(keys) == 37 and set(keys.values()) == {1}


def test_class_balanced_sampling_repeats_rare_class_images(dataset):
    factors = repeat_factors(dataset.combined("train"), threshold=0.3)
    assert factors[1] == 1.0 and factors[2] > 1.5  # person in most images, car in 4 of 37

    def car_share(balanced: bool) -> float:
        cfg = _cfg(workers=0, class_balanced=balanced, epoch_samples=600)
        with train_loader(cfg, dataset, seed=1, rank=0, world_size=1) as loader:
            labels = [lab for _, lab, _ in loader]
        return float(np.mean([bool((lab == 2).any()) for batch in labels for lab in batch]))

    plain, balanced = car_share(False), car_share(True)
    assert plain < 0.2 and balanced > plain * 1.5


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2), (3, 2)])
def test_each_evaluation_slot_reads_only_the_bytes_of_its_own_samples(dataset, world, workers):
    import os

    from segdist.data.tar_reader import Reader, Skips, range_samples, slot_ranges

    class CountingReader(Reader):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def open(self, url, start, end, stats):
            stream, reader = super().open(url, start, end, stats), self

            class Counted:
                def read(self, n=-1):
                    data = stream.read(n)
                    reader.bytes += len(data)
                    return data

                def __getattr__(self, name):
                    return getattr(stream, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    stream.close()

            return Counted()

    urls, records = dataset.shards("val")
    total_bytes = sum(os.path.getsize(u) for u in urls)
    slots = world * workers
    read, samples = [], 0
    for slot in range(slots):
        reader = CountingReader()
        samples += sum(1 for s in range_samples(slot_ranges(urls, records, slot, slots), Skips(), reader)
                       if not isinstance(s, int))
        read.append(reader.bytes)
    assert samples == dataset.split("val")["samples"]  # every sample once
    assert 0.9 * total_bytes <= sum(read) <= total_bytes  # every sample read, no byte twice (the old reader
    # read every shard in every slot: slots x total_bytes)
    largest_sample = max(b - a for r in records for a, b in zip(r["offsets"], r["offsets"][1:]))
    assert max(read) <= total_bytes / slots + 2 * largest_sample + 2 * 10240  # its share, give or take a sample


def test_resampling_reads_every_sample_equally_often_whatever_its_shards_size(monkeypatch):
    import itertools
    import random

    from segdist.data import tar_reader

    # CamVid train: a full shard and the split's short last one. A draw reads a shard whole, so drawing
    # shards uniformly already gives every sample the same chance; drawing them by size would not.
    sizes = {"a.tar": 256, "b.tar": 111}
    monkeypatch.setattr(tar_reader, "shard_samples", lambda url, skips, reader, expected: (
        {"__key__": f"{url}/{i}"} for i in range(sizes[url])))
    stream = tar_reader.resampled_samples(list(sizes.items()), random.Random(0), tar_reader.Skips(), reader=None)
    read = Counter(sample["__key__"].split("/")[0] for sample in itertools.islice(stream, 400_000))
    per_sample = {url: read[url] / count for url, count in sizes.items()}
    # drawn in proportion to their sizes, each of a's samples would come 256 / 111 = 2.3 times as often
    assert per_sample["b.tar"] / per_sample["a.tar"] == pytest.approx(1, abs=0.08)
