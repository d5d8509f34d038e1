"""Validation during training: exact, synchronised, on the EMA when there is one, with overlay panels."""

from __future__ import annotations

import math

from segdist.data.eval_loader import eval_loader
from segdist.distributed import agree, broadcast_buffers
from segdist.evaluation.metrics import SegmentationMetrics, metrics_from_confusion
from segdist.evaluation.scoring import score
from segdist.training import trackers
from segdist.training.session import Session
from segdist.utils import faults
from segdist.utils.viz import write_overlays


def evaluate(s: Session) -> dict:
    """Every validation sample once across processes, one summed confusion matrix; returns its figures."""
    cfg, accelerator = s.cfg, s.accelerator
    faults.hit("validation")
    # the EMA when there is one; never the DDP wrapper: processes may run different batch counts
    net = s.ema.module if s.ema is not None else accelerator.unwrap_model(s.model)
    broadcast_buffers(accelerator, net)
    net.eval()
    metrics = SegmentationMetrics(s.info.num_classes, s.info.ignore_index).to(accelerator.device)
    loader = eval_loader(cfg.data, s.info, cfg.data.val_split, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, size=cfg.data.val_size)
    with loader:
        scored = score(net, loader, s.normalize, metrics, device=accelerator.device,
                       precision=cfg.train.mixed_precision, keep_examples=cfg.train.log_images if s.main else 0)
    result = metrics_from_confusion(metrics.confusion(), s.info.classes)
    unreadable = int(agree(accelerator, len(scored.unreadable))[0])
    net.train()
    if unreadable:
        s.say(f"segdist: WARNING: validation could not read {unreadable} sample(s), e.g. {scored.unreadable[:3]}")
    values = {"val/miou": result["miou"], "val/pixel_accuracy": result["pixel_accuracy"],
              "val/unreadable": unreadable}
    values.update({f"val_iou/{name}": f["iou"] for name, f in result["per_class"].items() if not math.isnan(f["iou"])})
    accelerator.log(values, step=s.state["update"])
    if s.main:
        log_overlays(s, scored.examples)
    return result


def log_overlays(s: Session, examples: list) -> None:
    """Input | ground truth | prediction panels for the first validation images (trackers and PNG)."""
    images = write_overlays(examples, s.info.palette, s.info.ignore_index, s.run_dir / "val_overlays")
    trackers.log_images(s.accelerator, images, s.state["update"])
