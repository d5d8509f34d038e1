"""Training-side benchmarks, each a ratio against a baseline measured in the same run.

(a) loader: segdist's shard reader vs a folder-of-files torch Dataset (PIL decode, the same
    albumentations pipeline, the same DataLoader workers) on the same synthetic COCO images.
(b) step overhead: `segdist train`'s loop vs a bare PyTorch loop (same model, batch, optimizer)
    both fed the same in-memory tensors, so only the loop itself differs.
(c) on a GPU: bf16 + channels_last vs fp32 images/s for U-Net-ResNet34 at 512x512.

    python benchmarks/train.py [--images 300] [--workers 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


class FolderDataset(torch.utils.data.Dataset):
    """What a hand-written pipeline does: PIL-open an image and a mask file per sample."""

    def __init__(self, image_dir: Path, mask_dir: Path, transform):
        self.images = sorted(image_dir.glob("*.jpg"))
        self.mask_dir, self.transform = mask_dir, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = np.asarray(Image.open(self.images[i]).convert("RGB"))
        mask = np.asarray(Image.open(self.mask_dir / f"{self.images[i].stem}.png"))
        out = self.transform(image=image, mask=mask)
        return torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), torch.from_numpy(out["mask"].astype(np.int64))


def images_per_second(batches, limit: int, prepare=lambda images, labels: (images, labels)) -> float:
    n, start = 0, None
    for images, labels in batches:
        images, labels = prepare(images, labels)  # segdist normalises on the device: counted here
        if start is None:  # first batch includes worker start-up for both loaders: leave it out
            start = time.perf_counter()
            continue
        n += images.shape[0]
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


def bench_loader(work: Path, n_images: int, workers: int, batch: int) -> list[tuple[float, float]]:
    """(segdist, folder) img/s with the full augmentation, then with a plain crop (the reader's share)."""
    from segdist.cli import main
    from segdist.config import DataConfig
    import albumentations as A

    from segdist.data import Normalizer, load_dataset_info, normalization, train_loader, train_transform
    from segdist.sources.synthetic import write_synthetic_coco

    write_synthetic_coco(work / "raw", n_images, val_images=1, seed=0)
    main(["prepare", "coco", "--images", str(work / "raw/train"), "--annotations",
          str(work / "raw/annotations/instances_train.json"), "--classes", "person,bicycle,car",
          "--out", str(work / "shards"), "--keep-empty", "--shard-size", "64"])
    info = load_dataset_info(work / "shards")
    # the folder baseline gets the very same images and label maps as files
    import webdataset as wds

    (work / "folder/images").mkdir(parents=True)
    (work / "folder/masks").mkdir()
    for s in wds.WebDataset(info.urls("train"), shardshuffle=False):
        (work / "folder/images" / f"{s['__key__']}.jpg").write_bytes(s["jpg"])
        (work / "folder/masks" / f"{s['__key__']}.png").write_bytes(s["seg.png"])
    results = []
    for augment in (dict(color_jitter=0.5), dict(scale_range=[1.0, 1.0], hflip=0.0)):
        cfg = DataConfig(shards=str(work / "shards"), crop_size=[384, 384], batch_size=batch, workers=workers,
                         epoch_samples=10**6, **augment)
        limit = 2 * n_images
        normalize = Normalizer(*normalization(cfg, info))
        seg = images_per_second(train_loader(cfg, info, seed=0, epoch=0, rank=0, world_size=1), limit,
                                lambda images, labels: (normalize(images), labels.long()))
        # the hand-written way: the same augmentation, then Normalize in the worker, float32/int64 out
        transform = A.Compose([train_transform(cfg, info, seed=0), A.Normalize(*normalization(cfg, info))])
        folder = FolderDataset(work / "folder/images", work / "folder/masks", transform)
        sampler = torch.utils.data.RandomSampler(folder, replacement=True, num_samples=10**6)
        base = images_per_second(torch.utils.data.DataLoader(folder, batch_size=batch, sampler=sampler,
                                                             num_workers=workers, drop_last=True), limit)
        results.append((seg, base))
    return results


def bench_step(work: Path, steps: int, batch: int) -> tuple[float, float]:
    """Seconds per step: segdist's loop vs a bare loop, same model/optimizer/in-memory batch."""
    from segdist import train as train_mod
    from segdist.config import load_config
    from segdist.losses import build_loss
    from segdist.models import build_model

    torch.manual_seed(0)
    images = torch.randn(batch, 3, 256, 256)
    labels = torch.randint(0, 4, (batch, 256, 256))

    model = build_model("unet", "resnet18", 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    criterion = build_loss("ce", 4)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    bare = (time.perf_counter() - start) / steps

    # segdist's real loop, with its loader swapped for the same in-memory batch
    train_mod.train_loader = lambda *a, **k: [(images, labels)] * (steps + 3)
    train_mod.validate = lambda *a, **k: {"miou": 0.0}
    cfg = load_config(REPO / "configs/demo.yaml", [
        f"data.shards={work / 'shards'}", "data.val_split=train", f"train.runs_dir={work / 'runs'}", "model.encoder=resnet18",
        f"data.batch_size={batch}", "data.epoch_samples=1000000", f"train.max_steps={steps + 3}",
        "optim.scheduler=constant", "train.log_every=10", "train.checkpoint_every=100000", "train.keep_last=1",
    ])
    train_mod.train(cfg)
    log = [json.loads(line) for line in (work / "runs/demo/train_log.jsonl").read_text().splitlines()]
    assert len(log) == steps + 3
    return (log[-1]["time"] - log[2]["time"]) / steps, bare


def bench_gpu(steps: int) -> tuple[float, float] | None:
    if not torch.cuda.is_available():
        return None
    from segdist.models import build_model

    def run(bf16: bool) -> float:
        torch.manual_seed(0)
        model = build_model("unet", "resnet34", 19).cuda()
        images = torch.randn(8, 3, 512, 512, device="cuda")
        labels = torch.randint(0, 19, (8, 512, 512), device="cuda")
        if bf16:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for i in range(steps + 5):
            if i == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return 8 * steps / (time.perf_counter() - start)

    return run(True), run(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        loaders = bench_loader(work, args.images, args.workers, args.batch)
        step_seg, step_bare = bench_step(work, args.steps, 4)
    gpu = bench_gpu(args.steps)
    print(f"\n(a) loader, synthetic COCO 640x480, {args.workers} workers, batch {args.batch}:")
    for label, (seg, base) in zip(("random scale 0.5-2 + crop 384 + flip + colour jitter", "plain crop 384"), loaders):
        print(f"    {label:<52} segdist shards {seg:7.1f} img/s   folder Dataset {base:7.1f} img/s   "
              f"ratio {seg / base:.2f}x")
    print(f"(b) step, U-Net-ResNet18 256x256 batch 4, AdamW, CPU ({torch.get_num_threads()} threads):")
    print(f"    segdist loop {step_seg * 1e3:8.1f} ms/step   bare loop {step_bare * 1e3:8.1f} ms/step   "
          f"overhead {(step_seg / step_bare - 1) * 100:+.1f}%")
    if gpu is None:
        print("(c) GPU bf16 + channels_last vs fp32: no CUDA device here, not measured")
    else:
        print(f"(c) U-Net-ResNet34 512x512 batch 8 on {torch.cuda.get_device_name()}: bf16+channels_last "
              f"{gpu[0]:.1f} img/s, fp32 {gpu[1]:.1f} img/s, ratio {gpu[0] / gpu[1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
