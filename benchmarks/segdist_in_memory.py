"""`segdist train` with its loader replaced by one fixed in-memory batch: segdist's loop alone.

For the loop-overhead benchmark (benchmarks/train.py): everything of the real loop runs (accelerate,
DDP, accumulation context, the per-step all-reduce of loss / stop / skip counts, logging, the
stop-signal check), only the data comes from memory, as it does for the bare loop it is compared
with (benchmarks/plain_loop.py --in-memory). Run it like `segdist train`:

    accelerate launch --config_file launch/cpu-2proc.yaml benchmarks/segdist_in_memory.py --config X ...
"""

from __future__ import annotations

import sys

import torch

import segdist.training.loop
from segdist.cli import main


class InMemory:
    """Stands in for segdist.data.workers.Loader: the same uint8 batch, `end - start` times."""

    def __init__(self, cfg, info, plan, *, start: int, end: int, **_):  # noqa: ANN001
        h, w = cfg.crop_size
        generator = torch.Generator().manual_seed(0)
        self.batch = (torch.randint(0, 256, (cfg.batch_size, 3, h, w), dtype=torch.uint8, generator=generator),
                      torch.randint(0, info.num_classes, (cfg.batch_size, h, w), dtype=torch.uint8,
                                    generator=generator), {"skipped": {}, "retries": 0, "unavailable": {},
                                                                  "keys": [], "decoded": cfg.batch_size})
        self.count = end - start

    def __iter__(self):
        return iter([self.batch] * self.count)

    def close(self) -> None:
        pass

    def __enter__(self) -> InMemory:
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.close()


segdist.training.loop.train_loader = InMemory
segdist.training.loop.evaluate = lambda s: {"miou": 0.0, "per_class": {}}

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
