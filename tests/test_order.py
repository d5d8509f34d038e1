"""Training order v2: batches as random as a uniform shuffle, repeats spread through the epoch, chunks
only where a ranged request pays, and the order settings a run uses written where a person reads them."""

import json
import tempfile
from dataclasses import replace

import numpy as np
import pytest
from helpers import synthetic_shards

from segdist.config import ConfigError, DataConfig, load_config
from segdist.data.info import DatasetInfo, load_dataset_info
from segdist.data.order import SampleIndex, epoch_order, repeat_copies
from segdist.data.order_stats import batch_pairs, region_share_ratio, repeated_pair_share
from segdist.data.plan import REMOTE_CHUNK, Shape, TrainPlan, carried_end, fit_shape, plan_for, resumed_origin
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
    assert default_chunk(DataConfig(), _remote("s3://bucket/data")) == 1  # remote shards are cached by default
    assert default_chunk(DataConfig(cache=False), _remote("http://host/data")) == REMOTE_CHUNK
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
    from segdist.training.run_plan import training_plan

    shards = synthetic_shards(tmp_path_factory.mktemp("rec"), images=12, val_images=2, seed=2, width=64, height=48,
                              shard_size=4)
    cfg = load_config(None, [f"data.shards={shards}", "data.batch_size=2"])
    assert cfg.data.chunk is None and cfg.data.lanes is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    plan = training_plan(cfg, load_dataset_info(shards), None)
    assert (cfg.data.lanes, cfg.data.chunk, cfg.data.shuffle_window) == (plan.lanes, 1, plan.window)
    assert plan.lanes == len(json.loads((shards / "dataset.json").read_text())["splits"]["train"]["shards"])


def read_positions(plan: TrainPlan, updates: range) -> list[tuple[int, int]]:
    """(epoch, position) of every sample the plan's processes read in `updates`."""
    shape = plan.shape
    return [(epoch, int(p)) for update in updates for micro in range(shape.accumulate)
            for rank in range(shape.processes)
            for epoch, positions in [plan.positions(update * shape.accumulate + micro, rank)] for p in positions]


@pytest.mark.parametrize("before,after,at", [
    (Shape(4, 2, 1), Shape(6, 1, 1), 3), (Shape(4, 2, 1), Shape(4, 3, 1), 3), (Shape(3, 1, 2), Shape(4, 2, 1), 7),
    (Shape(4, 2, 1), Shape(2, 1, 2), 5), (Shape(8, 1, 1), Shape(4, 3, 1), 4)])
def test_a_resume_on_another_global_batch_goes_on_from_its_place_in_the_epoch(before, after, at):
    old = TrainPlan(index_of((8,) * 5), 0, 4, 4, 1, before)
    new = replace(old, shape=after)
    new = replace(new, origin=resumed_origin(new, old.state(), at))
    read = read_positions(old, range(at)) + read_positions(new, range(at, new.next_epoch_end(new.first_epoch_end)))
    assert len(read) == len(set(read))  # nothing replayed
    epoch, sample = old.where(at)
    by_epoch = {e: sorted(p for f, p in read if f == e) for e in {e for e, _ in read}}
    whole = (40 - sample) // after.global_batch * after.global_batch
    assert by_epoch[epoch] == list(range(sample + whole))  # the epoch goes on; only its new tail is skipped
    assert by_epoch[epoch + 1] == list(range(40 // after.global_batch * after.global_batch))
    assert new.is_epoch_end(new.first_epoch_end) and new.epochs_begun(new.first_epoch_end) == epoch + 1
    end = carried_end(old, new, 3 * old.updates_per_epoch, at)  # a run of 3 epochs still ends after 3 epochs
    assert new.is_epoch_end(end) and new.epochs_begun(end) == 3 and not new.is_epoch_end(end - 1)


def test_fit_shape_never_raises_the_per_process_batch():
    assert all(fit_shape(g, b, a, w)[0].batch <= b for g, b, a, w in
               [(96, 32, 1, 2), (96, 32, 1, 3), (96, 24, 2, 1), (64, 16, 1, 4), (12, 6, 1, 1)])


def parts_read(plan: TrainPlan, epoch_updates: range, node: int) -> set[int]:
    per_node = plan.shape.processes // plan.nodes
    read = read_positions_of(plan, epoch_updates, range(node * per_node, (node + 1) * per_node))
    return {plan.index.locate(int(plan.order(e)[p]))[0] for e, p in read}


def read_positions_of(plan: TrainPlan, updates: range, ranks: range) -> list[tuple[int, int]]:
    a = plan.shape.accumulate
    return [(epoch, int(p)) for u in updates for m in range(a) for r in ranks
            for epoch, positions in [plan.positions(u * a + m, r)] for p in positions]


@pytest.mark.parametrize("factors", [None, "rare"])
def test_nodes_read_disjoint_shards_and_every_sample_at_most_once(factors):
    counts = (32,) * 14 + (20,)
    index = index_of(counts)
    f = None if factors is None else np.where(np.arange(sum(counts)) % 5 == 0, 2.5, 1.0)
    plan = TrainPlan(index, 0, 6, 4, 1, Shape(4, 4, 1), f, nodes=2)
    for epoch in range(3):
        updates = range(epoch * plan.updates_per_epoch, (epoch + 1) * plan.updates_per_epoch)
        assert not parts_read(plan, updates, 0) & parts_read(plan, updates, 1)  # no shard on both nodes
        read = read_positions_of(plan, updates, range(4))
        assert len(read) == len(set(read)) == plan.samples_per_epoch  # positions: never one twice
    # a node gets 7 or 8 of the 15 parts: an epoch is what the smallest 7 hold on each node (89% here)
    # (with repeat factors only their whole parts are sure to fall on a node: 83% here)
    assert plan.usable == 20 + 6 * 32 if factors is None else 2 * plan.usable >= 0.8 * plan.epoch_length
    single = TrainPlan(index, 0, 6, 4, 1, Shape(4, 4, 1), f)
    assert single.positions(7, 3)[1].tolist() == list(range(7 * 16 + 12, 7 * 16 + 16))  # one node: the global order


def test_a_node_count_that_cannot_share_the_lanes_is_refused_with_the_counts_that_can():
    from segdist.data.nodes import check_nodes

    with pytest.raises(DataError, match="run on 1, 3, 5, 15 node"):
        check_nodes(2, 15)
    check_nodes(3, 15)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3)])
def test_a_resume_on_another_node_count_reads_the_rest_of_the_epoch_once(before, after):
    index = index_of((24,) * 12)
    old = TrainPlan(index, 0, 6, 4, 1, Shape(2, 2 * before, 1), nodes=before)
    new = replace(old, shape=Shape(2, 2 * after, 1), nodes=after, _sequences={})
    at = 5
    new = replace(new, origin=resumed_origin(new, old.state(), at), _sequences={})
    assert new.reshared(0) == (before != after)
    first = read_positions_of(old, range(at), range(2 * before))
    rest = read_positions_of(new, range(at, new.first_epoch_end), range(2 * after))
    assert not set(first) & set(rest) and len(rest) == len(set(rest))
    assert len(first) + len(rest) > 0.9 * index.size  # only the new tail is left out
    later = read_positions_of(new, range(new.first_epoch_end, new.first_epoch_end + new.updates_per_epoch),
                              range(2 * after))
    assert {e for e, _ in later} == {1} and len(set(later)) == new.samples_per_epoch


def test_an_epochs_order_is_built_once_per_node_and_shared(tmp_path, monkeypatch):
    import segdist.data.plan as plan_module
    from segdist.data import shared_orders

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = TrainPlan(index_of(CAMVID_LIKE), 0, 6, 16, 1, Shape(4, 2, 1))
    expected = first.order(3)
    assert list(tmp_path.glob("segdist-orders-*/*-e3.npy"))
    monkeypatch.setattr(plan_module, "epoch_order", lambda *a, **k: pytest.fail("built twice"))
    second = TrainPlan(index_of(CAMVID_LIKE), 0, 6, 16, 1, Shape(8, 1, 1))  # another process, another shape
    assert np.array_equal(second.order(3), expected)
    for epoch in range(4, 7):
        monkeypatch.setattr(plan_module, "epoch_order", epoch_order)
        first.order(epoch)
    assert sorted(int(p.stem.rsplit("-e", 1)[1]) for p in tmp_path.glob("segdist-orders-*/*.npy")) == [4, 5, 6]
    assert shared_orders.KEEP == 2
