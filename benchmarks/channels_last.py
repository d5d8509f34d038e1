"""Channels-last against contiguous on this machine's CPU: a training step and an inference batch, per model.

segdist runs convolutions channels-last on CPU by default (`model.channels_last: null`,
segdist.models.factory.use_channels_last). This measures what that choice is worth: the same model twice
(same initial weights), one contiguous and one channels-last, their steps interleaved with the
order alternating so the machine's drifting load falls on both alike. A training step is
forward, cross-entropy, backward and Adam on random inputs; inference is a no-grad forward and
argmax. Prints the median time of each and the ratio (> 1: channels-last is faster).

    python benchmarks/channels_last.py [--steps 10] [--models unet:resnet18:8:192:256 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segdist.models import build_model

MODELS = ["unet:resnet18:8:192:256", "unet:resnet34:4:256:256", "deeplabv3plus:resnet18:4:256:256",
          "deeplabv3plus:resnet50:2:256:256", "deeplabv3:mobilenetv3_large_100:4:256:256", "unet:resnet10t:8:128:128"]
CLASSES = 11


class Pair:
    """One model in one memory format, its optimizer and fixed inputs."""

    def __init__(self, arch: str, encoder: str, shape: tuple[int, int, int], channels_last: bool):
        torch.manual_seed(0)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(arch, encoder, CLASSES).to(memory_format=self.format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-3)
        batch, height, width = shape
        self.images = torch.randn(batch, 3, height, width).contiguous(memory_format=self.format)
        self.labels = torch.randint(0, CLASSES, (batch, height, width))

    def train_step(self) -> float:
        began = time.perf_counter()
        self.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(self.model(self.images), self.labels).backward()
        self.optimizer.step()
        return time.perf_counter() - began

    def infer(self) -> float:
        began = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            self.model(self.images).argmax(1)
        self.model.train()
        return time.perf_counter() - began


def compare(spec: str, steps: int) -> None:
    arch, encoder, *shape = spec.split(":")
    pairs = {fmt: Pair(arch, encoder, tuple(map(int, shape)), fmt == "channels_last")
             for fmt in ("contiguous", "channels_last")}
    for pair in pairs.values():  # first allocations, oneDNN primitive caches
        pair.train_step(), pair.infer()
    train: dict[str, list[float]] = {fmt: [] for fmt in pairs}
    infer: dict[str, list[float]] = {fmt: [] for fmt in pairs}
    for i in range(steps):
        for fmt in (("contiguous", "channels_last") if i % 2 else ("channels_last", "contiguous")):
            train[fmt].append(pairs[fmt].train_step())
            infer[fmt].append(pairs[fmt].infer())
    t = {fmt: statistics.median(v) * 1000 for fmt, v in train.items()}
    f = {fmt: statistics.median(v) * 1000 for fmt, v in infer.items()}
    print(f"| {arch} {encoder} | {'x'.join(shape)} | {t['contiguous']:.0f} | {t['channels_last']:.0f} | "
          f"{t['contiguous'] / t['channels_last']:.2f}x | {f['contiguous']:.0f} | {f['channels_last']:.0f} | "
          f"{f['contiguous'] / f['channels_last']:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="interleaved steps per format and model")
    parser.add_argument("--models", nargs="+", default=MODELS, help="arch:encoder:batch:height:width")
    args = parser.parse_args()
    print(f"CPU, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps (ms)")
    print("| model | batch x H x W | train contiguous | train channels-last | ratio | "
          "infer contiguous | infer channels-last | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for spec in args.models:
        compare(spec, args.steps)


if __name__ == "__main__":
    main()
