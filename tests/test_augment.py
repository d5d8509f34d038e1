"""Augmentation draws: independent across transforms, fixed by (seed, sample index)."""

from collections import Counter

import numpy as np

from segdist.config import DataConfig
from segdist.data.augment import augment, train_transform


def _flips_seen(seed: int, draws: int) -> list[tuple[bool, bool]]:
    """(horizontal flip?, vertical flip?) for `draws` consecutive samples of the stream `seed`."""
    cfg = DataConfig(crop_size=[32, 64], scale_range=[1.0, 1.0], hflip=0.5, vflip=0.5)
    transform = train_transform(cfg, ignore_index=255)
    image = np.arange(32 * 64 * 3, dtype=np.uint32).reshape(32, 64, 3).astype(np.uint8)
    label = (np.arange(32 * 64).reshape(32, 64) % 251).astype(np.uint8)
    outcomes = []
    for index in range(draws):
        out, _ = augment(transform, image, label, seed, index)
        out = out.numpy().transpose(1, 2, 0)
        for h in (False, True):
            for v in (False, True):
                expected = image[::-1 if v else 1, ::-1 if h else 1]
                if np.array_equal(out, expected):
                    outcomes.append((h, v))
    assert len(outcomes) == draws
    return outcomes


def test_two_half_probability_flips_fire_independently():
    draws = 400
    counts = Counter(_flips_seen(seed=7, draws=draws))
    # each combination has probability 1/4: 100 expected, sd 8.7; 4.5 sd either side
    assert set(counts) == {(False, False), (False, True), (True, False), (True, True)}, counts
    assert all(61 <= n <= 139 for n in counts.values()), counts


def test_the_same_seed_reproduces_the_same_draws_and_another_seed_does_not():
    assert _flips_seen(seed=3, draws=40) == _flips_seen(seed=3, draws=40)
    assert _flips_seen(seed=3, draws=40) != _flips_seen(seed=4, draws=40)


def _road_shares(cat_max_ratio: float | None, draws: int = 200) -> list[float]:
    """The share of class 0 ("road") in each of `draws` 64x64 crops of a 256x256 scene that is 80% road."""
    cfg = DataConfig(crop_size=[64, 64], scale_range=[1.0, 1.0], hflip=0.0, cat_max_ratio=cat_max_ratio)
    transform = train_transform(cfg, ignore_index=255)
    image = np.zeros((256, 256, 3), np.uint8)
    label = np.zeros((256, 256), np.uint8)
    label[:, 205:] = 1  # a band of another class down the right: 20% of the scene
    label[:8] = 255  # ignored pixels count for neither class
    return [float((augment(transform, image, label, 5, i)[1] == 0).float().mean()) for i in range(draws)]


def test_cat_max_ratio_redraws_crops_where_one_class_dominates_as_mmseg_does():
    plain, balanced = _road_shares(None), _road_shares(0.75)
    mixed = lambda shares: sum(0 < s < 0.75 for s in shares) / len(shares)  # noqa: E731
    # a crop's left edge is uniform over 0..192 and the band starts at 205: ~1/5 of crops mix the classes
    # (road < 75%) on one draw, nearly all with up to 10 draws
    assert mixed(plain) < 0.3 and mixed(balanced) > 0.8, (mixed(plain), mixed(balanced))
    assert _road_shares(0.75) == balanced  # still fixed by the sample's seed


def test_photometric_distortion_changes_colours_and_never_the_labels():
    cfg = DataConfig(crop_size=[32, 32], scale_range=[1.0, 1.0], hflip=0.0, photometric=True)
    transform = train_transform(cfg, ignore_index=255)
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (32, 32, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (32, 32), dtype=np.uint8)
    outputs = [augment(transform, image, label, 1, i) for i in range(200)]
    changed = [not np.array_equal(out.numpy().transpose(1, 2, 0), image) for out, _ in outputs]
    assert all(np.array_equal(lab.numpy(), label) for _, lab in outputs)
    assert 0.8 < sum(changed) / len(changed) < 1.0  # 1 - 0.5^4 of samples: at least one of the four fires
