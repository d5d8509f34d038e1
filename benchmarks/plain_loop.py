"""The hand-written training loop segdist replaces, as the prior reports write it (the baseline).

A folder Dataset reading each image and mask with PIL, albumentations, an smp U-Net, Adam and
cross-entropy; with WORLD_SIZE > 1 (torch.distributed.run) it adds DDP and a DistributedSampler,
as the PyTorch DDP tutorial does. Prints one JSON line: per-step wall-clock times of rank 0.

    python benchmarks/plain_loop.py --images DIR --masks DIR --steps 40
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/plain_loop.py ... (2 processes)
    python benchmarks/plain_loop.py ... --in-memory    (no loader: the same batch every step)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image


class FolderDataset(torch.utils.data.Dataset):
    """PIL-open an image and its mask file per sample, augment, normalise, return float/long tensors."""

    def __init__(self, images: Path, masks: Path, transform: A.Compose):
        self.images = sorted(images.glob("*.jpg")) + sorted(images.glob("*.png"))
        self.masks, self.transform = masks, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = np.asarray(Image.open(self.images[i]).convert("RGB"))
        mask = np.asarray(Image.open(self.masks / f"{self.images[i].stem}.png"))
        out = self.transform(image=image, mask=mask)
        return torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), torch.from_numpy(out["mask"].astype(np.int64))


def endless(loader, sampler):  # noqa: ANN001, ANN201
    """Epoch after epoch of `loader`, reshuffled each epoch as the DDP tutorial does."""
    for epoch in itertools.count():
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader


def augmentation(crop: tuple[int, int], ignore: int) -> A.Compose:
    """The same augmentation as segdist's recipe (random scale, pad, crop, flip), then Normalize."""
    return A.Compose([
        A.RandomScale(scale_limit=(-0.5, 1.0), p=1.0),
        A.PadIfNeeded(*crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore),
        A.RandomCrop(*crop),
        A.HorizontalFlip(p=0.5),
        A.Normalize(),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path)
    parser.add_argument("--masks", type=Path)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--ignore", type=int, default=11)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--crop", type=int, nargs=2, default=[192, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--in-memory", action="store_true", help="feed one fixed batch: the bare loop alone")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    model = smp.Unet(encoder_name=f"tu-{args.encoder}", encoder_weights=None, classes=args.classes)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=args.ignore)
    if args.in_memory:
        batch = (torch.randn(args.batch, 3, *args.crop), torch.randint(0, args.classes, (args.batch, *args.crop)))
        batches = iter([batch] * args.steps)
    else:
        dataset = FolderDataset(args.images, args.masks, augmentation(tuple(args.crop), args.ignore))
        sampler = torch.utils.data.DistributedSampler(dataset) if world > 1 else \
            torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**6)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler,
                                             num_workers=args.workers, drop_last=True, persistent_workers=True)
        batches = endless(loader, sampler)
    model.train()
    times = []
    for step, (images, masks) in zip(range(args.steps), batches):
        loss = criterion(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.time())
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"times": times, "batch": args.batch, "world": world}), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
