"""Training order v2: batches as random as a uniform shuffle, repeats spread through the epoch, chunks
only where a ranged request pays, and the order settings a run uses written where a person reads them."""

import json

import numpy as np
import pytest
from helpers import synthetic_shards

from segdist.config import ConfigError, DataConfig, load_config
from segdist.data.info import DatasetInfo, load_dataset_info
from segdist.data.order import SampleIndex, epoch_order, repeat_copies
from segdist.data.order_stats import batch_pairs, region_share_ratio, repeated_pair_share
from segdist.data.plan import REMOTE_CHUNK, Shape, plan_for
from segdist.errors import DataError

CAMVID_LIKE = (32,) * 14 + (20,)  # CamVid's 468 training frames in shards of 32


def index_of(counts: tuple[int, ...]) -> SampleIndex:
    return SampleIndex(tuple(f"s{i}.tar" for i in range(len(counts))), counts, tuple(tuple(range(c)) for c in counts),
                       None)


def uniform_orders(size: int, epochs: int, factors: np.ndarray | None = None) -> list[np.ndarray]:
    """What a DistributedSampler-style uniform shuffle gives, with the same repeat counts."""
    orders = []
    for epoch in range(epochs):
        ids = np.arange(size) if factors is None else np.repeat(np.arange(size), repeat_copies(factors, 0, epoch))
        orders.append(np.random.default_rng(epoch).permutation(ids))
    return orders


def repeated_pairs(orders: list[np.ndarray], batch: int, size: int) -> float:
    """The share of an epoch's batch-mate pairs that were batch-mates in the previous epoch."""
    used = min(map(len, orders)) // batch * batch
    return repeated_pair_share([batch_pairs(order[:used], batch, size) for order in orders])


def rare_factors(size: int, share: float = 0.2) -> np.ndarray:
    return np.where(np.random.default_rng(1).random(size) < share, 2.0, 1.0)


@pytest.mark.parametrize("counts, batch", [(CAMVID_LIKE, 8), ((500,) * 20, 32)])
@pytest.mark.parametrize("repeats", [False, True])
def test_batches_repeat_batch_mates_about_as_often_as_a_uniform_shuffle(counts, batch, repeats):
    index = index_of(counts)
    factors = rare_factors(index.size) if repeats else None
    epochs = 12
    ours = repeated_pairs([epoch_order(index, 0, e, 16, 256, factors) for e in range(epochs)], batch, index.size)
    uniform = repeated_pairs(uniform_orders(index.size, epochs, factors), batch, index.size)
    assert ours <= 1.5 * uniform, (ours, uniform)


def test_remote_chunks_keep_file_neighbours_together_which_is_why_they_are_not_the_default():
    index = index_of(CAMVID_LIKE)
    chunked = repeated_pairs([epoch_order(index, 0, e, 16, 256, chunk=8) for e in range(12)], 8, index.size)
    assert chunked > 5 * repeated_pairs(uniform_orders(index.size, 12), 8, index.size)


@pytest.mark.parametrize("counts", [CAMVID_LIKE, (500,) * 20])
def test_repeats_are_spread_so_any_prefix_holds_the_rare_samples_at_their_share(counts):
    """The k-th copies used to come in the lane's k-th pass: 76% of them in an epoch's last 20%."""
    index = index_of(counts)
    factors = rare_factors(index.size)
    halves, lasts = [], []
    for epoch in range(12):
        order = epoch_order(index, 0, epoch, 16, 256, factors)
        halves.append(region_share_ratio(order, factors > 1, 0.0, 0.5))
        lasts.append(region_share_ratio(order, factors > 1, 0.8, 1.0))
    assert abs(np.mean(halves) - 1) <= 0.1 and abs(np.mean(lasts) - 1) <= 0.15, (halves, lasts)


def test_a_shorter_epoch_keeps_the_repeats_share(tmp_path_factory, ray_cluster):
    shards = synthetic_shards(tmp_path_factory.mktemp("order"), images=60, val_images=4, seed=4, width=64,
                              height=48, shard_size=10)
    info = load_dataset_info(shards)
    cfg = DataConfig(class_balanced=True, balance_threshold=0.9, epoch_samples=30, batch_size=5)
    plan = plan_for(cfg, info, 0, Shape(5, 1, 1))
    assert plan.factors.max() > 1 and plan.samples_per_epoch == 30
    shares = []
    for epoch in range(20):
        order = plan.order(epoch)
        shares.append(region_share_ratio(order, plan.factors > 1, 0.0, plan.samples_per_epoch / len(order)))
    assert abs(np.mean(shares) - 1) <= 0.15, shares


def _remote(url: str) -> DatasetInfo:
    return DatasetInfo(url, {"splits": {}})


def test_samples_are_read_one_by_one_unless_each_run_costs_a_remote_request(tmp_path):
    from segdist.data.plan import default_chunk

    assert default_chunk(DataConfig(), DatasetInfo(tmp_path, {})) == 1
    assert default_chunk(DataConfig(), _remote("http://host/data")) == REMOTE_CHUNK
    assert default_chunk(DataConfig(cache_dir=str(tmp_path)), _remote("s3://bucket/data")) == 1
    assert default_chunk(DataConfig(chunk=4), _remote("http://host/data")) == 4  # said explicitly: kept


def test_a_split_named_twice_is_refused_not_read_twice(tmp_path):
    info = DatasetInfo(tmp_path, {"splits": {"train": {"shards": []}}})
    with pytest.raises(DataError, match=r"names \['train'\] more than once"):
        plan_for(DataConfig(train_split=["train", "train"]), info, 0, Shape(2, 1, 1))


def test_the_old_name_of_the_shuffle_window_says_what_it_is_now():
    with pytest.raises(ConfigError, match="data.shuffle_buffer is now data.shuffle_window"):
        load_config(None, ["data.shuffle_buffer=64"])


def test_an_old_checkpoints_order_is_refused_with_a_message_not_a_key_error(tmp_path_factory, ray_cluster):
    shards = synthetic_shards(tmp_path_factory.mktemp("old"), images=10, val_images=2, seed=1, width=64, height=48)
    saved = {"algorithm": "segdist-order/1", "seed": 0, "lanes": 2, "window": 8, "global_batch": 2}  # no "chunk"
    with pytest.raises(DataError, match="'segdist-order/1'.*start a new run"):
        plan_for(DataConfig(), load_dataset_info(shards), 0, Shape(2, 1, 1), saved)


def test_config_yaml_records_the_order_settings_the_run_uses(tmp_path_factory, ray_cluster, monkeypatch):
    from segdist.training.session import training_plan

    shards = synthetic_shards(tmp_path_factory.mktemp("rec"), images=12, val_images=2, seed=2, width=64, height=48,
                              shard_size=4)
    cfg = load_config(None, [f"data.shards={shards}", "data.batch_size=2"])
    assert cfg.data.chunk is None and cfg.data.lanes is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    plan = training_plan(cfg, load_dataset_info(shards), None)
    assert (cfg.data.lanes, cfg.data.chunk, cfg.data.shuffle_window) == (plan.lanes, 1, plan.window)
    assert plan.lanes == len(json.loads((shards / "dataset.json").read_text())["splits"]["train"]["shards"])
