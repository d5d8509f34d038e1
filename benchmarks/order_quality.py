"""How random the training order's global batches are, and where repeat-factor copies fall in an epoch.

segdist's training order (segdist/data/order.py, `epoch_order`) is compared with a uniform
permutation of the same samples (a DataLoader with shuffle=True; with repeat factors, the epoch's
repeated ids uniformly permuted), epoch by epoch over E epochs. Global batch k of an epoch is
positions [kG, (k+1)G) of its order; an epoch uses its first whole global batches. No data is read:
only the order's sample ids (numpy).

  repeated pairs   the distinct unordered pairs of samples that share a global batch in epoch e
                   (a sample with itself, from two copies, is not a pair); the share of epoch e's
                   pairs that were also batch-mates in epoch e-1, averaged over e = 1..E-1
  ratio            that share over the uniform permutation's (target: <= 1.5)
  mates/sample     distinct batch-mates a sample had over the E epochs (mean over all samples)
  later copies     with repeat factors: of the second and later copies of a sample in an epoch,
                   the share in the epoch's last 20% of positions (pooled over epochs); independent
                   uniform positions give about 36% (the uniform row measures it)
  rare 50/60/l20   with repeat factors: the share of positions held by "rare" samples (factor > 1,
                   or > --rare-above) in the epoch's first 50%, first 60% and last 20%, divided by
                   their share over the whole epoch (mean over epochs; target: within [0.9, 1.1])

Configurations:

  camvid   with --shards DIR: the prepared CamVid train split (dataset.json), real repeat factors
           (data.class_balanced, --balance-threshold); otherwise a synthetic stand-in: 468 samples
           in 15 shard parts of 32 (the last 20), 20% of the samples at factor 2.0; global batch 8
  100k     100,000 samples in shard parts of 1,000, global batch 64, 20% of the samples at factor 2.0

Each runs without and with repeat factors, for every --chunks value; lanes are capped at the shard
parts (as plan_for does). The order is imported from segdist.data.order, through `build_order`
(adapt that one function if its signature changes), so rerunning this measures the current order.

    python benchmarks/order_quality.py [--configs camvid 100k] [--shards DIR] [--epochs 30]
        [--epochs-100k 10] [--lanes 16] [--window 256] [--chunks 8 1] [--seed 0] [--rare-above 1.0]
        [--balance-threshold 0.9] [--json PATH]
    python benchmarks/order_quality.py --build-samples 10000000 [--chunks 1 8] [--order-module OLD.py]

The metric functions are in segdist/data/order_stats.py (the tests check the order with them).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segdist.data.order import SampleIndex, epoch_length, epoch_order, repeat_copies
from segdist.data.order_stats import (batch_pairs, distinct_mates_per_sample, later_copies_in_tail,
                                      region_share_ratio, repeated_pair_share)

RARE_SHARE = 0.2  # synthetic repeat factors: this share of the samples ...
RARE_FACTOR = 2.0  # ... at this factor, the others at 1
FACTOR_SEED = 20240  # which samples are rare (fixed)
REGIONS = {"first50": (0.0, 0.5), "first60": (0.0, 0.6), "last20": (0.8, 1.0)}  # epoch fractions [start, stop)


# ---- the orders -------------------------------------------------------------------------------------------

def build_order(index: SampleIndex, seed: int, epoch: int, lanes: int, window: int,
                factors: np.ndarray | None, chunk: int) -> np.ndarray:
    """segdist's training order of `epoch` (global sample ids, repeated ids with `factors`)."""
    return epoch_order(index, seed, epoch, lanes, window, factors, chunk)


def uniform_order(index: SampleIndex, seed: int, epoch: int, factors: np.ndarray | None) -> np.ndarray:
    """The baseline: a uniform permutation of the epoch's samples (with `factors`, of its repeated ids,
    each sample's copies as `repeat_copies` counts them)."""
    ids = np.arange(index.size, dtype=np.int64)
    if factors is not None:
        ids = np.repeat(ids, repeat_copies(factors, seed, epoch))
    return np.random.default_rng(seed + epoch).permutation(ids)


def samples_per_epoch(index: SampleIndex, factors: np.ndarray | None, global_batch: int) -> int:
    """Positions an epoch uses: whole global batches of the shortest epoch (TrainPlan.samples_per_epoch)."""
    return epoch_length(index, factors) // global_batch * global_batch


def measure(order_of: Callable[[int], np.ndarray], n: int, global_batch: int, samples: int, epochs: int,
            rare: np.ndarray | None) -> dict:
    """All metrics of an order builder (`order_of(epoch)`) over `epochs` epochs of `samples` positions.
    `rare` (bool per sample) is given with repeat factors: the copy and rare-share metrics."""
    pairs, later, later_tail, regions = [], 0, 0, {name: [] for name in REGIONS}
    for epoch in range(epochs):
        order = order_of(epoch)
        if len(order) < samples:
            raise ValueError(f"epoch {epoch}'s order holds {len(order)} samples, fewer than the {samples} used")
        order = order[:samples]
        pairs.append(batch_pairs(order, global_batch, n))
        if rare is not None:
            count, in_tail = later_copies_in_tail(order)
            later, later_tail = later + count, later_tail + in_tail
            for name, (start, stop) in REGIONS.items():
                regions[name].append(region_share_ratio(order, rare, start, stop))
    result = {"repeated_pairs": repeated_pair_share(pairs), "mates_per_sample": distinct_mates_per_sample(pairs, n),
              "pairs_per_epoch": float(np.mean([len(p) for p in pairs]))}
    if rare is not None:
        result["later_copies_last20"] = later_tail / later if later else math.nan
        result.update({f"rare_{name}": float(np.mean(values)) for name, values in regions.items()})
    return result


# ---- the configurations -----------------------------------------------------------------------------------

def synthetic_index(counts: list[int]) -> SampleIndex:
    """A SampleIndex of shard parts with `counts` samples (made-up names and offsets; no classes)."""
    return SampleIndex(tuple(f"synthetic-{i:06d}.tar" for i in range(len(counts))), tuple(counts),
                       tuple(tuple(range(0, 1024 * c, 1024)) for c in counts), None)


def synthetic_factors(n: int, share: float = RARE_SHARE, factor: float = RARE_FACTOR,
                      seed: int = FACTOR_SEED) -> np.ndarray:
    """Repeat factors: round(share * n) samples (chosen by `seed`) at `factor`, the others at 1."""
    factors = np.ones(n)
    factors[np.random.default_rng(seed).choice(n, round(share * n), replace=False)] = factor
    return factors


def camvid_config(shards: str | None, threshold: float) -> tuple[str, SampleIndex, np.ndarray, int]:
    """(name, index, repeat factors, global batch): the prepared train split, or the synthetic stand-in."""
    if shards is None:
        index = synthetic_index([32] * 14 + [20])
        return "camvid-synthetic", index, synthetic_factors(index.size), 8
    from segdist.config import DataConfig
    from segdist.data.info import load_dataset_info
    from segdist.data.plan import sample_factors, sample_index

    info = load_dataset_info(shards)
    index = sample_index(info, "train", with_classes=True)
    cfg = DataConfig(shards=shards, class_balanced=True, balance_threshold=threshold)
    return "camvid", index, sample_factors(info, cfg, index), 8


def hundred_k_config() -> tuple[str, SampleIndex, np.ndarray, int]:
    index = synthetic_index([1000] * 100)
    return "100k", index, synthetic_factors(index.size), 64


# ---- the table --------------------------------------------------------------------------------------------

COLUMNS = [("config", 16), ("N", 7), ("E", 3), ("G", 3), ("lanes", 5), ("chunk", 5), ("rf", 3), ("builder", 7),
           ("rep.pairs", 9), ("x unif", 6), ("mates/smp", 9), ("2nd+ l20", 8), ("rare f50", 8), ("rare f60", 8),
           ("rare l20", 8)]


def cell(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def row_text(row: dict) -> str:
    m = row["metrics"]
    values = [row["config"], str(row["samples"]), str(row["epochs"]), str(row["global_batch"]), str(row["lanes"]),
              "-" if row["chunk"] is None else str(row["chunk"]), "yes" if row["factors"] else "no", row["builder"],
              cell(m["repeated_pairs"], ".4%"), cell(row["ratio_to_uniform"], ".2f"),
              cell(m["mates_per_sample"], ".1f"),
              cell(m.get("later_copies_last20"), ".1%"), cell(m.get("rare_first50"), ".3f"),
              cell(m.get("rare_first60"), ".3f"), cell(m.get("rare_last20"), ".3f")]
    return "  ".join(v.rjust(w) if i > 0 else v.ljust(w) for i, (v, (_, w)) in enumerate(zip(values, COLUMNS)))


def run_config(name: str, index: SampleIndex, factors: np.ndarray, global_batch: int, epochs: int,
               args: argparse.Namespace) -> list[dict]:
    """The rows of one configuration: without and with factors, the order per chunk, then the uniform baseline."""
    rows = []
    lanes = max(1, min(args.lanes, len(index.counts)))
    print(f"# {name}: {index.size} samples in {len(index.counts)} shard parts, global batch {global_batch}, "
          f"{epochs} epochs; repeat factors: {np.mean(factors > args.rare_above):.0%} of the samples above "
          f"{args.rare_above:g} (rare), "
          f"mean {factors.mean():.2f}, max {factors.max():.2f}", flush=True)
    for with_factors in (False, True):
        f = factors if with_factors else None
        rare = factors > args.rare_above if with_factors else None
        samples = samples_per_epoch(index, f, global_batch)
        uniform = measure(lambda e: uniform_order(index, args.seed, e, f), index.size, global_batch, samples, epochs,
                          rare)
        base = {"config": name, "samples": index.size, "parts": len(index.counts), "global_batch": global_batch,
                "lanes": lanes, "rare_samples": float(np.mean(factors > args.rare_above)) if with_factors else None,
                "window": args.window, "factors": with_factors, "epochs": epochs, "epoch_positions": samples}
        for chunk in args.chunks:
            m = measure(lambda e: build_order(index, args.seed, e, lanes, args.window, f, chunk), index.size,
                        global_batch, samples, epochs, rare)
            rows.append({**base, "chunk": chunk, "builder": "order", "metrics": m,
                         "ratio_to_uniform": m["repeated_pairs"] / uniform["repeated_pairs"]})
            print(row_text(rows[-1]), flush=True)
        rows.append({**base, "chunk": None, "builder": "uniform", "metrics": uniform, "ratio_to_uniform": 1.0})
        print(row_text(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=["camvid", "100k"], default=["camvid", "100k"])
    parser.add_argument("--shards", help="a prepared CamVid (dataset.json) for the camvid configuration")
    parser.add_argument("--balance-threshold", type=float, default=0.9, help="repeat factors' t (with --shards)")
    parser.add_argument("--rare-above", type=float, default=1.0,
                        help="rare samples: repeat factor above this (CamVid at t=0.9 has nearly all above 1)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs measured (E)")
    parser.add_argument("--epochs-100k", type=int, help="epochs for the 100k configuration (default: --epochs)")
    parser.add_argument("--lanes", type=int, default=16, help="the order's lanes (at most the shard parts)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--chunks", "--chunk", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--build-samples", type=int, help="only time building one epoch's order of this many samples")
    parser.add_argument("--order-module", type=Path, nargs="*", default=[],
                        help="with --build-samples: other order.py files to time beside this segdist's")
    args = parser.parse_args()
    if args.build_samples:
        return time_builds(args.build_samples, args.chunks, args.order_module)
    if args.epochs < 2 or (args.epochs_100k or args.epochs) < 2:
        parser.error("repeated pairs need at least 2 epochs")

    started = time.perf_counter()
    print(f"lanes {args.lanes} (at most the shard parts), window {args.window}, seed {args.seed}; "
          f"2nd+ l20: later copies in the last 20%; rare f50/f60/l20: rare samples' share there / the epoch's")
    print("  ".join(t.rjust(w) if i else t.ljust(w) for i, (t, w) in enumerate(COLUMNS)))
    rows = []
    for config in args.configs:
        if config == "camvid":
            rows += run_config(*camvid_config(args.shards, args.balance_threshold), args.epochs, args)
        else:
            rows += run_config(*hundred_k_config(), args.epochs_100k or args.epochs, args)
    elapsed = time.perf_counter() - started
    print(f"targets: x unif <= 1.5; rare f50/f60/l20 in [0.9, 1.1]. {elapsed:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"lanes": args.lanes, "window": args.window, "seed": args.seed,
                                         "seconds": elapsed, "rows": rows}, indent=1) + "\n")


def time_builds(samples: int, chunks: list[int], others: list[Path], repeats: int = 3) -> None:
    """Seconds to build one epoch's order of `samples` (parts of 1,000): this segdist's `epoch_order` and
    each `others` order.py (e.g. `git show deca874:segdist/data/order.py > /tmp/order_v1.py`), alternated."""
    import importlib.util
    import sys

    builders = {"this segdist": sys.modules[epoch_order.__module__]}
    for path in others:
        spec = importlib.util.spec_from_file_location(f"order_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        builders[str(path)] = module
    counts = [1000] * (samples // 1000)
    indexes = {name: m.SampleIndex(tuple(f"s{i}.tar" for i in range(len(counts))), tuple(counts),
                                   tuple(tuple(range(c)) for c in counts), None) for name, m in builders.items()}
    times: dict[tuple[str, int], list[float]] = {(name, c): [] for name in builders for c in chunks}
    for epoch in range(repeats):
        for (name, chunk), spent in times.items():
            began = time.perf_counter()
            builders[name].epoch_order(indexes[name], 0, epoch, 16, 256, None, chunk)
            spent.append(time.perf_counter() - began)
    for (name, chunk), spent in times.items():
        print(f"order of {samples} samples, {name}, chunk {chunk}: median {np.median(spent):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in spent)})")


if __name__ == "__main__":
    main()
