"""An evaluation's report: metrics.json (NaN as null), the confusion and per-class IoU charts, TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

from segdist.utils.files import write_json_atomic
from segdist.utils.viz import confusion_png, per_class_iou_png

NAN_NOTE = (
    "null is NaN (0/0): all figures of a class absent from both ground truth and prediction (absent_classes), "
    "the precision of a class never predicted, the recall/accuracy of a class not in the ground truth. "
    "NaN figures are left out of every mean."
)


def with_class_accuracy(figures: dict) -> dict:
    """Add per-class `accuracy` (MMSegmentation's Acc: correct pixels of the class / its pixels = recall)."""
    for per_class in figures["per_class"].values():
        per_class["accuracy"] = per_class["recall"]
    return figures


def write_outputs(report: dict, out: Path) -> None:
    """metrics.json (NaN written as null), the row-normalised confusion matrix and the per-class IoU chart."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", nan_to_none(report))
    title = f"{Path(report['run']).name} {report['split']} ({report['samples']} samples)"
    confusion_png(report["confusion"], report["class_names"], out / "confusion.png", title)
    per_class_iou_png(report, out / "per_class_iou.png", title)


def nan_to_none(value):  # noqa: ANN001, ANN201
    """JSON has no NaN: write null instead (strict parsers reject Python's bare NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def log_to_tensorboard(run, report: dict, out: Path) -> None:  # noqa: ANN001 - a runs.Run
    """Means, per-class IoU and both charts in the run's TensorBoard, at the checkpoint's step."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    step, tag = run.step or 0, f"eval/{report['split']}"
    with SummaryWriter(str(run.dir / "tb")) as writer:
        for key in ("miou", "mdice", "pixel_accuracy", "mean_class_accuracy", "mprecision", "mrecall"):
            if not math.isnan(report[key]):
                writer.add_scalar(f"{tag}/{key}", report[key], step)
        for name, figures in report["per_class"].items():
            if not math.isnan(figures["iou"]):
                writer.add_scalar(f"{tag}/iou/{name}", figures["iou"], step)
        for chart in ("confusion", "per_class_iou"):
            image = np.asarray(Image.open(out / f"{chart}.png").convert("RGB"))
            writer.add_image(f"{tag}/{chart}", image, step, dataformats="HWC")
    print(f"TensorBoard: logged under '{tag}' at step {step} in {run.dir / 'tb'}")
