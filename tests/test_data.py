"""The shard readers: exact epochs in one order for any shape, every validation sample once, balancing."""

from collections import Counter

import numpy as np
import pytest
import torch
from helpers import run_cli, square, train_plan, write_coco

from segdist.config import DataConfig
from segdist.data.eval_loader import eval_loader
from segdist.data.info import load_dataset_info
from segdist.data.plan import repeat_factors
from segdist.data.train_loader import train_loader


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
    return DataConfig(**{"crop_size": [32, 32], "batch_size": 3, "val_batch_size": 4, "shuffle_window": 8, **kw})


@pytest.mark.parametrize("workers", [0, 2])
def test_every_process_runs_the_same_number_of_steps(dataset, workers):
    cfg = _cfg(workers=workers)
    for world in (1, 2, 3):
        plan = train_plan(cfg, dataset, world)
        expected = 37 // (world * 3)  # whole global batches of 3 x world samples; the tail is dropped
        assert plan.batches_per_epoch == expected
        for rank in range(world):
            with train_loader(cfg, dataset, plan, rank=rank) as loader:
                batches = list(loader)
            assert len(batches) == expected
            images, labels, read = batches[0]
            assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 32, 32)
            assert read["skipped"] == {} and read["retries"] == 0 and read["unavailable"] == {}
            assert len(read["keys"]) == read["decoded"] == 3


def _batches(cfg, dataset, start, end, rank=0, world=2):
    with train_loader(cfg, dataset, train_plan(cfg, dataset, world), rank=rank, start=start, end=end) as loader:
        return [(images, labels) for images, labels, _ in loader]


def test_training_batches_are_fixed_by_seed_epoch_and_rank(dataset):
    cfg = _cfg(workers=1)

    def first(seed, epoch, rank):
        plan = train_plan(cfg, dataset, 2, seed=seed)
        with train_loader(cfg, dataset, plan, rank=rank, start=epoch * plan.batches_per_epoch) as loader:
            return next(iter(loader))[0]

    assert np.array_equal(first(0, 0, 0), first(0, 0, 0))
    assert not np.array_equal(first(0, 0, 0), first(0, 0, 1))
    assert not np.array_equal(first(0, 0, 0), first(0, 1, 0))
    assert not np.array_equal(first(0, 0, 0), first(1, 0, 0))


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_loader_started_at_any_batch_continues_the_uninterrupted_stream(dataset, workers):
    """Resuming mid-epoch (and across epochs) gives exactly the batches the run would have seen."""
    cfg = _cfg(workers=workers)
    per_epoch = train_plan(cfg, dataset, 2).batches_per_epoch  # 6: not a multiple of 4 or 3 + 3 ...
    end = 2 * per_epoch + 3
    whole = _batches(cfg, dataset, 0, end)
    assert len(whole) == end
    for start in (1, per_epoch - 1, per_epoch, per_epoch + 2):
        tail = _batches(cfg, dataset, start, end)
        assert len(tail) == end - start
        for (a, b), (c, d) in zip(whole[start:], tail):
            assert torch.equal(a, c) and torch.equal(b, d)


# (processes, loader workers, per-process batch, accumulation): the same global batch of 12
SHAPES = [(1, 0, 6, 2), (2, 1, 6, 1), (2, 3, 3, 2), (4, 2, 3, 1), (3, 1, 4, 1)]


def _epoch_keys(dataset, processes, workers, batch, accumulate, epochs, monkeypatch):
    """Every position's key over `epochs` epochs, read as the shape's ranks and loader workers would."""
    import segdist.data.train_loader as module

    cfg = _cfg(workers=0, batch_size=batch)
    plan = train_plan(cfg, dataset, processes, accumulate)
    end = epochs * plan.batches_per_epoch
    by_position = {}
    for rank in range(processes):
        for worker in range(max(workers, 1)):  # each loader worker's share, one after the other
            monkeypatch.setattr(module, "worker_slot", lambda: (worker, max(workers, 1)))
            batches = module.TrainBatches(plan, cfg, dataset.ignore_index, rank=rank, start=0, end=end)
            mine = range(worker, end, max(workers, 1))
            for j, (_, _, read) in zip(mine, batches):
                epoch, positions = plan.positions(j, rank)
                for position, key in zip(positions, read["keys"]):
                    assert (epoch, int(position)) not in by_position  # no position twice
                    by_position[epoch, int(position)] = key
    return [[by_position[e, p] for p in range(plan.samples_per_epoch)] for e in range(epochs)]


def test_each_epoch_is_one_pass_in_the_same_order_whatever_the_processes_and_workers(dataset, monkeypatch):
    reference = None
    for shape in SHAPES:
        epochs = _epoch_keys(dataset, *shape, epochs=3, monkeypatch=monkeypatch)
        for keys in epochs:
            assert len(keys) == len(set(keys)) == 36  # 37 samples, the last global batch of 12 ends at 36
        assert epochs[0] != epochs[1] != epochs[2]
        assert len(set(epochs[0]) | set(epochs[1]) | set(epochs[2])) == 37  # a different tail each epoch
        reference = reference or epochs
        assert epochs == reference, shape


def test_class_balanced_sampling_repeats_rare_class_images(dataset):
    factors = repeat_factors(dataset.combined("train"), threshold=0.3)
    assert factors[1] == 1.0 and factors[2] > 1.5  # person in most images, car in 4 of 37

    def car_share(balanced: bool) -> float:
        cfg = _cfg(workers=0, class_balanced=balanced)
        plan = train_plan(cfg, dataset)
        with train_loader(cfg, dataset, plan, rank=0, end=20 * plan.batches_per_epoch) as loader:
            labels = [lab for _, lab, _ in loader]
        return float(np.mean([bool((lab == 2).any()) for batch in labels for lab in batch]))

    plain, balanced = car_share(False), car_share(True)
    assert plain < 0.2 and balanced > plain * 1.3  # expected: 1.55x (car images at factor 1.67)


def test_repeat_factors_come_out_right_on_average_and_every_epoch_has_the_same_length():
    from segdist.data.order import SampleIndex, epoch_length, epoch_order, repeat_copies

    factors = np.random.default_rng(0).uniform(1.0, 3.0, 500)
    copies = np.array([repeat_copies(factors, 7, epoch) for epoch in range(400)])
    assert np.abs(copies.mean(0) - factors).max() < 0.25 and set(np.unique(copies)) <= {1, 2, 3}
    assert {int(c.sum()) for c in copies} <= {int(np.floor(factors.sum())), int(np.floor(factors.sum())) + 1}
    index = SampleIndex(("a", "b"), (300, 200), (tuple(range(300)), tuple(range(200))), None)
    for epoch in range(3):
        assert len(epoch_order(index, 7, epoch, 2, 16, factors)) >= epoch_length(index, factors)


# segdist-order/2's epoch 0 of seed 0 over parts of 5, 5, 5 and 2 samples, 2 lanes, window 3 (chunk 1, the
# default for local and cached shards), without and with repeats of every 4th sample: any change of the
# algorithm changes them, and must come with a new ALGORITHM (a resume across the change is then refused)
PINNED_ORDER = [9, 12, 8, 14, 5, 7, 13, 6, 11, 1, 15, 3, 4, 16, 0, 10, 2]
PINNED_REPEATS = [9, 12, 8, 14, 4, 5, 7, 13, 6, 11, 1, 8, 0, 15, 3, 4, 16, 12, 0, 10, 16, 2]


def test_the_order_is_fixed_integer_mixing_not_a_random_number_stream():
    """The same seed gives the same order on any machine and numpy version: its first ids are pinned here."""
    from segdist.data.order import ALGORITHM, SampleIndex, epoch_order, splitmix64

    assert ALGORITHM == "segdist-order/2"
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF  # Vigna's reference value
    index = SampleIndex(tuple("abcd"), (5, 5, 5, 2), tuple(tuple(range(n)) for n in (5, 5, 5, 2)), None)
    order = epoch_order(index, 0, 0, lanes=2, window=3)
    assert sorted(order.tolist()) == list(range(17))
    assert order.tolist() == PINNED_ORDER
    factors = np.where(np.arange(17) % 4 == 0, 2.0, 1.0)
    assert epoch_order(index, 0, 0, lanes=2, window=3, factors=factors).tolist() == PINNED_REPEATS


def test_fit_shape_keeps_the_global_batch_or_says_why_it_cannot():
    from segdist.data.plan import Shape, fit_shape
    from segdist.errors import DataError

    assert fit_shape(16, 8, 1, 2) == (Shape(8, 2, 1), None)
    assert fit_shape(16, 8, 1, 1) == (Shape(8, 1, 2), "optim.accumulate 1 -> 2")
    assert fit_shape(16, 8, 1, 4) == (Shape(4, 4, 1), "data.batch_size 8 -> 4")
    # fewer processes never raise the per-process batch (memory): the accumulation grows instead
    assert fit_shape(96, 32, 1, 2) == (Shape(24, 2, 2), "data.batch_size 32 -> 24, optim.accumulate 1 -> 2")
    assert all(fit_shape(96, 32, 1, w)[0].batch <= 32 for w in (1, 2, 3, 4, 6))
    with pytest.raises(DataError, match="global batch is 16 samples .* 3 process"):
        fit_shape(16, 8, 1, 3)


def test_a_resume_refuses_another_dataset_seed_or_order_algorithm(dataset, tmp_path):
    from segdist.data.plan import Shape, plan_for
    from segdist.errors import DataError

    cfg = _cfg()
    saved = train_plan(cfg, dataset, 2).state()
    plan_for(cfg, dataset, 0, Shape(3, 2, 1), saved)  # the same: continues
    with pytest.raises(DataError, match="training data changed since the checkpoint"):
        plan_for(cfg, dataset, 0, Shape(3, 2, 1), dict(saved, fingerprint="0" * 16))
    with pytest.raises(DataError, match="seed 0, this run 5"):
        plan_for(cfg, dataset, 5, Shape(3, 2, 1), saved)
    with pytest.raises(DataError, match="sample order is 'segdist-order/0'"):
        plan_for(cfg, dataset, 0, Shape(3, 2, 1), dict(saved, algorithm="segdist-order/0"))
    with pytest.raises(DataError, match="sample order is None"):
        plan_for(cfg, dataset, 0, Shape(3, 2, 1), {})  # a checkpoint of the streams before exact epochs


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 4), (2, 2, 3), (3, 1, 5)])
def test_validation_sees_every_sample_exactly_once(dataset, world, workers, batch):
    keys = Counter()
    for rank in range(world):
        for b in eval_loader(_cfg(workers=workers), dataset, "val", rank=rank, world_size=world, batch_size=batch):
            keys.update(b["keys"])
            for image, label, size in zip(b["images"], b["labels"], b["sizes"]):
                assert image.shape[1] % 32 == 0 and tuple(label.shape) == size == (40, 48)
    assert len(keys) == 37 and set(keys.values()) == {1}


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


def test_a_loader_started_late_in_an_epoch_decodes_only_the_samples_of_its_batches(dataset, monkeypatch):
    """No replay: a resume at 90% of an epoch reads and decodes nothing before its first batch."""
    import segdist.data.train_loader as module

    decoded = []
    real = module.decode
    monkeypatch.setattr(module, "decode", lambda sample, *a: decoded.append(sample["__key__"]) or real(sample, *a))
    cfg = _cfg(workers=0, batch_size=1)
    plan = train_plan(cfg, dataset)
    start = int(0.9 * plan.batches_per_epoch)  # 33 of 37
    with train_loader(cfg, dataset, plan, rank=0, start=start, end=start + 1) as loader:
        (_, _, read), = list(loader)
    assert decoded == read["keys"] and len(decoded) == read["decoded"] == 1


def test_the_order_keeps_chunks_of_a_shard_together_and_moves_their_borders_every_epoch():
    from segdist.data.order import SampleIndex, epoch_order

    index = SampleIndex(tuple("abcd"), (40,) * 4, (tuple(range(40)),) * 4, None)  # 4 lanes of one part each
    borders = []
    for epoch in range(3):
        order = epoch_order(index, 3, epoch, lanes=4, window=16, chunk=8)
        assert sorted(order.tolist()) == list(range(160))  # still every sample once
        runs = np.split(order, np.flatnonzero(np.diff(order) != 1) + 1)  # consecutive ids: one ranged read
        assert max(map(len, runs)) <= 8 and np.mean([len(r) for r in runs]) > 5
        borders.append({int(r[0]) for r in runs})
    assert borders[0] != borders[1] != borders[2]


def test_repeated_copies_of_a_sample_land_in_other_chunks_still_read_in_runs():
    from segdist.data.order import SampleIndex, epoch_order

    index = SampleIndex(("a", "b"), (32, 32), (tuple(range(32)),) * 2, None)
    factors = np.where(np.arange(64) % 32 < 16, 2.0, 1.0)  # each part's first 16 samples come twice
    order = epoch_order(index, 0, 0, lanes=2, window=8, factors=factors, chunk=8)
    assert len(order) == 64 + 32
    runs = np.split(order, np.flatnonzero(np.diff(order) != 1) + 1)
    assert all(len(set(run.tolist())) == len(run) for run in runs)  # never a sample twice in one read
    seen, second = set(), []
    for position, sample in enumerate(order.tolist()):
        if sample in seen:
            second.append(position)
        seen.add(sample)
    copy_runs = np.split(np.array(second), np.flatnonzero(np.diff(second) != 1) + 1)
    assert np.mean([len(r) for r in copy_runs]) > 4  # the repeats are read in runs too, not one by one


def test_the_in_memory_tar_parser_reads_what_webdataset_reads(tmp_path):
    """Keys with folders, long (pax) names and odd sizes: the same samples as webdataset's own reader."""
    import io
    import tarfile

    from webdataset.tariterators import group_by_keys, tar_file_iterator

    from segdist.format.tar_members import samples

    names = ["a.jpg", "a.png", "dir/b.jpg", "dir/b.seg.png", "x" * 150 + ".jpg", "c.json"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, name in enumerate(names):
            body = bytes([i]) * (37 * i + 1)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    data = buffer.getvalue()
    expected = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
                for s in group_by_keys({**f, "__url__": "mem"} for f in tar_file_iterator(io.BytesIO(data)))]
    assert list(samples(data)) == expected
    assert [s["__key__"] for s in expected] == ["a", "dir/b", "x" * 150, "c"]


def test_a_broken_pax_record_is_a_truncated_shard_not_an_error_that_stops_the_rank(tmp_path):
    """A ValueError from the pax parser used to escape the reader and end one rank (the others waited)."""
    import io
    import tarfile

    from segdist.data.tar_reader import Reader, ShardRange, Skips, read_range

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("a.jpg", "x" * 150 + ".jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(buffer.getvalue())
    record = data.index(b" path=")
    data[record - 3:record] = b"zz "  # the record's length is no number
    shard = tmp_path / "s.tar"
    shard.write_bytes(bytes(data))
    skips = Skips()
    found = read_range(ShardRange(str(shard), 0, 2, 0, len(data)), skips, Reader())
    assert [s["__key__"] for s in found] in ([], ["a"]) and skips["truncated_shard"] == 1


def test_resize_stages_scale_each_micro_batch_by_the_optimizer_step_it_belongs_to(dataset):
    """data.resize_schedule: steps 0-1 at half scale (a 40x48 image becomes 20x24, padded to the 32x32 crop with
    ignored pixels), steps 2-3 at full scale (no padding); with 2 micro-batches a step, and from any start."""
    cfg = _cfg(workers=1, scale_range=[1.0, 1.0], hflip=0.0)
    plan = train_plan(cfg, dataset, 1)
    stages = [[0, 0.5], [2, 1.0]]

    def ignored_shares(start: int, end: int, accumulate: int = 1) -> list[float]:
        shaped = train_plan(cfg, dataset, 1, accumulate=accumulate) if accumulate > 1 else plan
        with train_loader(cfg, dataset, shaped, rank=0, start=start, end=end, stages=stages) as loader:
            return [round(float((labels == dataset.ignore_index).float().mean()), 2) for _, labels, _ in loader]

    padded = round(1 - 20 * 24 / 32**2, 2)
    assert ignored_shares(0, 4) == [padded, padded, 0.0, 0.0]
    assert ignored_shares(3, 4) == [0.0]  # a resumed loader: the stage follows the step, not the loader's start
    assert ignored_shares(0, 6, accumulate=2) == [padded] * 4 + [0.0] * 2
