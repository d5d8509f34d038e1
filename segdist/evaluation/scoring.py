"""Predict and score a split: the one path shared by training's validation and `segdist evaluate`.

Each process predicts its share of the split (`eval_loader`) at the label's resolution, under the
same precision rule (autocast in the run's `train.mixed_precision`), and adds to its own confusion
matrix; the caller sums the matrices across processes once (`SegmentationMetrics.confusion()`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from segdist.evaluation.metrics import SegmentationMetrics
from segdist.models.inference import NO_TTA, TTA, autocast, infer_each, labels_at


@dataclass
class Scored:
    """What one process scored: sample count, unreadable samples, and the first few predictions.

    `examples` are (uint8 image CHW, label HxW, predicted classes HxW) arrays (segdist.utils.viz.write_overlays).
    """

    samples: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


@torch.no_grad()
def score(model: torch.nn.Module, loader, normalize: torch.nn.Module, metrics: SegmentationMetrics, *,  # noqa: ANN001
          device: torch.device, precision: str = "no", mode: str = "whole", crop=None, stride=None,  # noqa: ANN001
          tta: TTA = NO_TTA, keep_examples: int = 0, progress: Callable[[int], None] | None = None,
          on_prediction: Callable[[str, torch.Tensor], None] | None = None) -> Scored:
    """Add this process's share of the split to `metrics`; `model` must be in eval mode.

    `on_prediction(key, classes)`, when given, receives every scored sample's predicted class ids
    (H x W at the label's resolution, on `device`), e.g. to write them in a benchmark's format.
    """
    result = Scored()
    for batch in loader:
        result.unreadable += batch["unreadable"]
        if batch["images"] is None:
            continue
        images = normalize(batch["images"].to(device, non_blocking=True))
        # each image at its own size: padding to a batch neighbour's size would change its prediction
        crops = [images[i, :, :h, :w] for i, (h, w) in enumerate(batch["sizes"])]
        with autocast(device, precision):
            probs = infer_each(model, crops, mode, crop=crop, stride=stride, tta=tta)
        for i, (p, label) in enumerate(zip(probs, batch["labels"])):
            label = label.to(device, non_blocking=True).long()
            pred = labels_at(p.float(), label.shape)
            metrics.update(pred[None], label[None])
            if on_prediction is not None:
                on_prediction(batch["keys"][i], pred)
            if len(result.examples) < keep_examples:
                h, w = batch["sizes"][i]
                example = (batch["images"][i, :, :h, :w], label, pred)
                result.examples.append(tuple(t.cpu().numpy() for t in example))
        result.samples += len(crops)
        if progress is not None:
            progress(len(crops) + len(batch["unreadable"]))
    return result
