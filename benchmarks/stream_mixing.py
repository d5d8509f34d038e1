"""How well the training stream mixes a split: the video sequences in each process's epoch.

CamVid's files are named by video sequence (0001TP, 0006R0, 0016E5, Seq05VD); `prepare` shuffles
a split's inputs into its shards (before 2026-11-22 it kept file order, so each shard held a few
sequences). segdist's training stream draws shards with replacement and passes them through a
shuffle buffer that starts empty each epoch (segdist/data/train_loader.py). This replays that stream's sample
order (the same seeds and code, no decoding) and measures, per process and epoch, the total
variation distance between the sequences it saw and the split's own mix; 0 is a perfect mix.
A DataLoader with shuffle=True (the plain loop) is the baseline: a uniform sample of the same size.

    python benchmarks/stream_mixing.py --shards /tmp/camvid-work/shards [--buffers 256 1024]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
from collections import Counter
from pathlib import Path

from segdist.config import DataConfig
from segdist.data.info import load_dataset_info
from segdist.data.tar_reader import Reader, Skips, shard_samples
from segdist.data.train_loader import TrainBatches, steps_per_epoch, stream_seed


def sequence(key: str) -> str:
    return Path(key).name.split("_")[0]


def distance(keys: list[str], split: Counter) -> float:
    """Total variation distance between the sequences of `keys` and the split's."""
    seen, total = Counter(map(sequence, keys)), sum(split.values())
    return 0.5 * sum(abs(seen[s] / len(keys) - split[s] / total) for s in split)


def epoch_keys(cfg: DataConfig, info, epoch: int, rank: int, count: int) -> list[str]:  # noqa: ANN001
    """The first `count` sample keys of (epoch, rank)'s stream 0, in segdist's training order."""
    batches = TrainBatches(cfg, info, seed=0, rank=rank, world_size=2, start=0, end=1)
    samples = batches.sample_order(stream_seed(0, epoch, rank, 0), Skips())
    return [s["__key__"] for s in itertools.islice(samples, count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--buffers", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    info = load_dataset_info(args.shards)
    urls, records = info.shards("train")
    shards = [(url, record["samples"]) for url, record in zip(urls, records)]
    everything = [s["__key__"] for url, n in shards for s in shard_samples(url, Skips(), Reader(), expected=n)]
    split = Counter(map(sequence, everything))
    print(f"train split: {dict(split)} in {len(shards)} shards of {[n for _, n in shards]} samples")
    for buffer in args.buffers:
        cfg = DataConfig(shuffle_buffer=buffer, batch_size=4)
        count = steps_per_epoch(cfg, info, 2) * cfg.batch_size  # one process's epoch on 2 processes
        tv = [distance(epoch_keys(cfg, info, e, r, count), split)
              for e in range(args.epochs) for r in (0, 1)]
        uniform = [distance(random.Random(i).sample(everything, count), split) for i in range(len(tv))]
        print(f"shuffle_buffer {buffer:5d}: mean distance {statistics.mean(tv):.3f} (worst {max(tv):.3f}) "
              f"over {len(tv)} process-epochs of {count} samples; DataLoader shuffle: "
              f"{statistics.mean(uniform):.3f} (worst {max(uniform):.3f})")


if __name__ == "__main__":
    main()
