"""What `segdist evaluate` costs beyond the model's forward pass, on CPU at 512x512 with 19 classes.

Per batch, each measured alone on the same tensors (median of --repeats):
  forward       model(images) under no_grad (the cost evaluation cannot avoid);
  update        SegmentationMetrics.update(preds, labels): the per-update range check + torchmetrics'
                confusion-matrix bincount (ignore pixels dropped);
  softmax+argmax  what `infer` (softmax) and `labels_at` (class ids) add to the logits (reported
                apart: prediction, not metric work).
Once per evaluation:
  sync          SegmentationMetrics.confusion() across 2 gloo processes (all-gather of the C x C
                int64 matrix), amortised over the batches of a Cityscapes-val-sized split (500 images).

The figure against the 5% target is (update + amortised sync) / forward.

    python benchmarks/evaluate.py [--batch 2] [--repeats 5] [--models unet:resnet34,deeplabv3:mobilenetv3_large_100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CLASSES, SIZE, IGNORE = 19, 512, 255
SPLIT_IMAGES, WORLD = 500, 2


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images and labels with 10% ignore pixels, as evaluate sees them."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (n, SIZE, SIZE), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = IGNORE
    return images, labels


def bench_model(arch: str, encoder: str, n: int, repeats: int) -> dict[str, float]:
    from segdist.evaluation.metrics import SegmentationMetrics
    from segdist.models import build_model
    from segdist.models.inference import labels_at

    torch.manual_seed(0)
    model = build_model(arch, encoder, CLASSES).eval()
    images, labels = batch(n)
    with torch.no_grad():
        forward = median_seconds(lambda: model(images), repeats)
        logits = model(images)

    def softmax_argmax() -> torch.Tensor:
        return torch.stack([labels_at(p, (SIZE, SIZE)) for p in logits.float().softmax(dim=1)])

    preds = softmax_argmax()
    metrics = SegmentationMetrics(CLASSES, IGNORE)
    return {
        "forward": forward,
        "update": median_seconds(lambda: metrics.update(preds, labels), repeats * 4),
        "range_check": median_seconds(lambda: metrics._check_range(preds, labels), repeats * 4),
        "softmax_argmax": median_seconds(softmax_argmax, repeats * 4),
    }


def _sync_worker(rank: int, port: int, repeats: int, results) -> None:  # noqa: ANN001
    from segdist.evaluation.metrics import SegmentationMetrics

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    metrics = SegmentationMetrics(CLASSES, IGNORE)
    preds, target = torch.randint(0, CLASSES, (1, 64, 64)), torch.randint(0, CLASSES, (1, 64, 64))
    times = []
    for _ in range(repeats + 1):
        metrics.update(preds, target)  # new state, so confusion() syncs again instead of returning its cache
        dist.barrier()
        start = time.perf_counter()
        metrics.confusion()
        times.append(time.perf_counter() - start)
    if rank == 0:
        results.put(statistics.median(times[1:]))
    dist.destroy_process_group()


def bench_sync(repeats: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_sync_worker, args=(port, repeats, results), nprocs=WORLD)
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="unet:resnet34,deeplabv3:mobilenetv3_large_100",
                        help="arch:encoder list (U-Net-ResNet34 is the Cityscapes recipe's model)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    sync = bench_sync(args.repeats * 4)
    batches = SPLIT_IMAGES / (WORLD * args.batch)
    print(f"\nevaluate overhead, CPU ({torch.get_num_threads()} threads), {args.batch}x3x{SIZE}x{SIZE}, "
          f"{CLASSES} classes, 10% ignore pixels")
    print(f"sync: confusion() over {WORLD} gloo processes {sync * 1e3:.2f} ms once per evaluation "
          f"({batches:.0f} batches per process for {SPLIT_IMAGES} images)")
    for spec in args.models.split(","):
        arch, encoder = spec.split(":")
        r = bench_model(arch, encoder, args.batch, args.repeats)
        metric = (r["update"] + sync / batches) / r["forward"]
        print(f"{arch}/{encoder}: forward {r['forward'] * 1e3:.1f} ms/batch; update {r['update'] * 1e3:.2f} ms "
              f"(range check {r['range_check'] * 1e3:.2f} ms = {r['range_check'] / r['update']:.0%} of it); "
              f"softmax+argmax {r['softmax_argmax'] * 1e3:.1f} ms")
        print(f"    metric update + sync = {metric:.2%} of the forward (target < 5%); with softmax+argmax "
              f"{metric + r['softmax_argmax'] / r['forward']:.2%}; without the range check "
              f"{metric - r['range_check'] / r['forward']:.2%}")


if __name__ == "__main__":
    sys.exit(main())
