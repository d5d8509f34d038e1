"""The hand-written training loop segdist replaces, as the prior reports write it (the baseline).

A folder Dataset reading each image and mask with PIL, albumentations, an smp U-Net, Adam and
cross-entropy; with WORLD_SIZE > 1 (torch.distributed.run) it adds DDP and a DistributedSampler,
as the PyTorch DDP tutorial does. Prints one JSON line: per-step wall-clock times of rank 0.

    python benchmarks/plain_loop.py --images DIR --masks DIR --steps 40
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/plain_loop.py ... (2 processes)
    python benchmarks/plain_loop.py ... --in-memory    (no loader: the same batch every step)
    python benchmarks/plain_loop.py ... --resize 180 240 --minutes 50 --val-images V --val-masks M --report R.json
        (the seed-style notebook: resized inputs, trained for a wall-clock budget, then scored on val:
         one confusion matrix over the whole split at the label's resolution)
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


def resized(size: tuple[int, int]) -> A.Compose:
    """The seed notebooks' pipeline: resize to a fixed size, flip, Normalize."""
    return A.Compose([A.Resize(*size), A.HorizontalFlip(p=0.5), A.Normalize()])


@torch.no_grad()
def score(model, images: Path, masks: Path, size: tuple[int, int] | None, classes: int, ignore: int) -> dict:  # noqa: ANN001
    """mIoU and per-class IoU over a whole split: one confusion matrix, predictions at the label's size."""
    model.eval()
    confusion = np.zeros((classes, classes), np.int64)
    normalize = A.Compose([A.Resize(*size), A.Normalize()] if size else [A.Normalize()])
    for path in sorted(images.glob("*.jpg")) + sorted(images.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        mask = np.asarray(Image.open(masks / f"{path.stem}.png")).astype(np.int64)
        x = torch.from_numpy(normalize(image=image)["image"].transpose(2, 0, 1).copy())[None]
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % 32, 0, -h % 32))
        logits = model(x)[..., :h, :w]
        logits = torch.nn.functional.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        pred = logits.argmax(1)[0].numpy()
        keep = mask != ignore
        confusion += np.bincount(mask[keep] * classes + pred[keep], minlength=classes**2).reshape(classes, classes)
    tp = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    return {"miou": float(np.nanmean(iou)), "per_class_iou": [float(v) for v in iou]}


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
    parser.add_argument("--resize", type=int, nargs=2, default=None, help="resize to H W instead of scale+crop")
    parser.add_argument("--minutes", type=float, default=None, help="train for this long instead of --steps")
    parser.add_argument("--val-images", type=Path, default=None)
    parser.add_argument("--val-masks", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="write steps, images and val scores here")
    args = parser.parse_args()
    started = time.time()

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
        transform = resized(tuple(args.resize)) if args.resize else augmentation(tuple(args.crop), args.ignore)
        dataset = FolderDataset(args.images, args.masks, transform)
        sampler = torch.utils.data.DistributedSampler(dataset) if world > 1 else \
            torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**6)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler,
                                             num_workers=args.workers, drop_last=True, persistent_workers=True)
        batches = endless(loader, sampler)
    model.train()
    times = []
    steps = itertools.count() if args.minutes else range(args.steps)
    for step, (images, masks) in zip(steps, batches):
        loss = criterion(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.time())
        if args.minutes and time.time() - started > args.minutes * 60:
            break
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"times": times, "batch": args.batch, "world": world}), flush=True)
        if args.report:
            report = {"steps": len(times), "images": len(times) * args.batch * world,
                      "train_minutes": (time.time() - started) / 60}
            if args.val_images:
                net = model.module if world > 1 else model
                report.update(score(net, args.val_images, args.val_masks, args.resize, args.classes, args.ignore))
            args.report.write_text(json.dumps(report, indent=1))
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
