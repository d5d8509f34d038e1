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
