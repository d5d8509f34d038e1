"""The shard readers: equal steps per process, every validation sample exactly once, balancing."""

from collections import Counter

import numpy as np
import pytest
from helpers import run_cli, square, write_coco

from segdist.config import DataConfig
from segdist.data import eval_loader, load_dataset_info, repeat_factors, steps_per_epoch, train_loader


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
            batches = list(train_loader(cfg, dataset, seed=0, epoch=0, rank=rank, world_size=world))
            assert len(batches) == expected
            images, labels = batches[0]
            assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 32, 32)


def test_training_stream_is_fixed_by_seed_epoch_and_rank(dataset):
    cfg = _cfg(workers=1)

    def first(seed, epoch, rank):
        return next(iter(train_loader(cfg, dataset, seed=seed, epoch=epoch, rank=rank, world_size=2)))[0]

    assert np.array_equal(first(0, 0, 0), first(0, 0, 0))
    assert not np.array_equal(first(0, 0, 0), first(0, 0, 1))
    assert not np.array_equal(first(0, 0, 0), first(0, 1, 0))


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
    factors = repeat_factors(dataset, "train", threshold=0.3)
    assert factors[1] == 1.0 and factors[2] > 1.5  # person in most images, car in 4 of 37

    def car_share(balanced: bool) -> float:
        cfg = _cfg(workers=0, class_balanced=balanced, epoch_samples=600)
        labels = [lab for _, lab in train_loader(cfg, dataset, seed=1, epoch=0, rank=0, world_size=1)]
        return float(np.mean([bool((lab == 2).any()) for batch in labels for lab in batch]))

    plain, balanced = car_share(False), car_share(True)
    assert plain < 0.2 and balanced > plain * 1.5
