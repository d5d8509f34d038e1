"""How well the training order mixes a split: the video sequences in each stretch of the order.

CamVid's files are named by video sequence (0001TP, 0006R0, 0016E5, Seq05VD); `prepare` shuffles
a split's inputs into its shards. segdist's training order (segdist/data/order.py) permutes the
shard parts per epoch, deals them into lanes, shuffles each lane within a window of samples and
interleaves the lanes. Every epoch holds every sample once, so the whole epoch always mixes
perfectly; what matters is each stretch a global batch or a few batches see. This computes the
order (no decoding) and measures, for stretches of `--stretch` consecutive positions, the total
variation distance between the sequences they hold and the split's own mix; 0 is a perfect mix.
A DataLoader with shuffle=True (the plain loop) is the baseline: a uniform permutation.

    python benchmarks/stream_mixing.py --shards /tmp/camvid-work/shards [--windows 256 1024] [--lanes 2 16]
        [--chunks 1 4 8] [--stretch 32]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import Counter
from pathlib import Path

from segdist.data.info import load_dataset_info
from segdist.data.order import epoch_order
from segdist.data.plan import sample_index
from segdist.data.tar_reader import Reader, Skips, shard_samples


def sequence(key: str) -> str:
    return Path(key).name.split("_")[0]


def distance(keys: list[str], split: Counter) -> float:
    """Total variation distance between the sequences of `keys` and the split's."""
    seen, total = Counter(map(sequence, keys)), sum(split.values())
    return 0.5 * sum(abs(seen[s] / len(keys) - split[s] / total) for s in split)


def stretches(order: list[str], size: int) -> list[list[str]]:
    return [order[i:i + size] for i in range(0, len(order) - size + 1, size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--windows", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--lanes", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--stretch", type=int, default=32, help="positions per stretch (e.g. a global batch)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    info = load_dataset_info(args.shards)
    index = sample_index(info, "train", with_classes=False)
    keys = [s["__key__"] for url, n in zip(index.urls, index.counts)
            for s in shard_samples(url, Skips(), Reader(), expected=n)]  # in global id order
    split = Counter(map(sequence, keys))
    print(f"train split: {dict(split)} in {len(index.counts)} shard parts of {list(index.counts)} samples")
    uniform = [distance(s, split) for e in range(args.epochs)
               for s in stretches(random.Random(e).sample(keys, len(keys)), args.stretch)]
    print(f"DataLoader shuffle: mean distance {statistics.mean(uniform):.3f} (worst {max(uniform):.3f}) "
          f"over stretches of {args.stretch}")
    for lanes in args.lanes:
        for window in args.windows:
            for chunk in args.chunks:
                orders = [[keys[i] for i in epoch_order(index, 0, e, lanes, window, chunk=chunk)]
                          for e in range(args.epochs)]
                tv = [distance(s, split) for order in orders for s in stretches(order, args.stretch)]
                print(f"lanes {lanes:3d} window {window:5d} chunk {chunk}: mean distance {statistics.mean(tv):.3f} "
                      f"(worst {max(tv):.3f})")


if __name__ == "__main__":
    main()
