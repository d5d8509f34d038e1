"""Dataset-level segmentation metrics from one confusion matrix, as MMSegmentation and torchvision report them.

Every figure comes from a single C x C confusion matrix summed over all samples and all ranks
(rows = ground truth, columns = prediction), never from per-image or per-batch averages.

Conventions for classes that are missing somewhere (same as MMSegmentation's 0/0 -> NaN):

- absent from both ground truth and prediction: every per-class figure is NaN, the class is
  listed under ``absent_classes`` and left out of all means;
- present in ground truth but never predicted: IoU, Dice and recall are 0, precision is NaN (0/0);
- predicted but absent from ground truth: IoU, Dice and precision are 0, recall is NaN (0/0).

Means are NaN-means, so a NaN figure never drags a mean down; a 0 does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

PER_CLASS_FIGURES = ("iou", "dice", "precision", "recall")


class SegmentationMetrics(torch.nn.Module):
    """Accumulates a confusion matrix over batches; ``confusion()``/``compute()`` sync it across ranks.

    ``confusion()`` and ``compute()`` are collective under torch.distributed: every rank must call
    them, in the same order, or the ranks deadlock.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # torchmetrics drops target == ignore_index before indexing; its state is a summed int64 matrix.
        self._confmat = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` class ids [N,H,W] or logits [N,C,H,W]; ``target`` class ids [N,H,W]."""
        pred_ids = self._to_class_ids(preds)
        if pred_ids.shape != target.shape:
            raise ValueError(f"preds {tuple(pred_ids.shape)} and target {tuple(target.shape)} differ in shape")
        self._check_range(pred_ids, target)
        self._confmat.update(pred_ids, target)

    def confusion(self) -> Tensor:
        """The [C, C] int64 confusion matrix summed over all batches and ranks (collective call)."""
        with warnings.catch_warnings():
            # A rank (or a run) that saw no batch still has a valid, all-zero matrix to contribute.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            return self._confmat.compute()

    def compute(self) -> dict:
        """All figures of :func:`metrics_from_confusion` for the synced matrix (collective call)."""
        return metrics_from_confusion(self.confusion())

    def reset(self) -> None:
        """Forget everything accumulated so far (local state only)."""
        self._confmat.reset()

    def _to_class_ids(self, preds: Tensor) -> Tensor:
        if preds.ndim == 4:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"logits have {preds.shape[1]} channels, expected {self.num_classes}")
            return preds.argmax(dim=1)
        if preds.is_floating_point():
            raise ValueError("class-id preds must be an integer tensor; pass logits as [N, C, H, W]")
        return preds

    def _check_range(self, pred_ids: Tensor, target: Tensor) -> None:
        """Reject ids outside [0, C): torchmetrics would silently count them in another class's cell."""
        counted = target != self.ignore_index
        bad_target = counted & ((target < 0) | (target >= self.num_classes))
        bad_pred = counted & ((pred_ids < 0) | (pred_ids >= self.num_classes))
        if bool((bad_target | bad_pred).any()):
            raise ValueError(
                f"class ids outside [0, {self.num_classes}) that are not ignore_index={self.ignore_index}: "
                f"target {_out_of_range(target[bad_target])}, preds {_out_of_range(pred_ids[bad_pred])}"
            )


def _out_of_range(values: Tensor) -> list[int]:
    return values.unique()[:10].tolist()


def metrics_from_confusion(confusion: np.ndarray | Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU/Dice/precision/recall, their NaN-means and pixel accuracy, as a JSON-ready dict.

    Keys: ``per_class`` ({name: {iou, dice, precision, recall}}), ``class_names``, ``miou``, ``mdice``,
    ``mprecision``, ``mrecall``, ``mean_class_accuracy`` (= ``mrecall``, MMSeg's mAcc),
    ``pixel_accuracy`` (MMSeg's aAcc), ``absent_classes``, ``num_classes``, ``pixels``, ``confusion``.
    """
    matrix = _as_square_int_matrix(confusion)
    names = _class_names(class_names, len(matrix))
    per_class = _per_class_figures(matrix.astype(np.float64))
    absent = _absent_mask(matrix)
    for figure in per_class.values():
        figure[absent] = np.nan  # already 0/0 for every figure; explicit so the contract holds by construction
    total = int(matrix.sum())
    return {
        "num_classes": len(matrix),
        "class_names": list(names),
        "pixels": total,
        "pixel_accuracy": _safe_ratio(float(np.trace(matrix)), float(total)),
        "miou": _nanmean(per_class["iou"]),
        "mdice": _nanmean(per_class["dice"]),
        "mprecision": _nanmean(per_class["precision"]),
        "mrecall": _nanmean(per_class["recall"]),
        "mean_class_accuracy": _nanmean(per_class["recall"]),
        "absent_classes": [name for name, is_absent in zip(names, absent) if is_absent],
        "per_class": {
            name: {figure: float(values[i]) for figure, values in per_class.items()} for i, name in enumerate(names)
        },
        "confusion": matrix.tolist(),
    }


def _as_square_int_matrix(confusion: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(confusion, Tensor):
        confusion = confusion.detach().cpu().numpy()
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {matrix.shape}")
    if np.any(matrix < 0):
        raise ValueError("confusion must not hold negative counts")
    return matrix.astype(np.int64)


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique (they key the per-class figures)")
    return names


def _per_class_figures(matrix: np.ndarray) -> dict[str, np.ndarray]:
    true_positive = np.diag(matrix)
    in_ground_truth = matrix.sum(axis=1)  # TP + FN
    predicted = matrix.sum(axis=0)  # TP + FP
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "iou": true_positive / (in_ground_truth + predicted - true_positive),
            "dice": 2 * true_positive / (in_ground_truth + predicted),
            "precision": true_positive / predicted,
            "recall": true_positive / in_ground_truth,
        }


def _absent_mask(matrix: np.ndarray) -> np.ndarray:
    return (matrix.sum(axis=0) == 0) & (matrix.sum(axis=1) == 0)


def _safe_ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN is the answer we want
        return float(np.nanmean(values)) if values.size else float("nan")


def format_table(metrics: dict) -> str:
    """A console table of per-class figures (in %), then the means, pixel accuracy and absent classes."""
    rows = [(name, *(figures[key] for key in PER_CLASS_FIGURES)) for name, figures in metrics["per_class"].items()]
    width = max([len("class"), len("mean"), *(len(row[0]) for row in rows)])
    header = f"{'class':<{width}} | {'IoU %':>7} | {'Dice %':>7} | {'precision %':>11} | {'recall %':>8}"
    rule = "-" * len(header)
    lines = [header, rule]
    lines += [_table_row(*row, width=width) for row in rows]
    lines += [rule, _table_row("mean", metrics["miou"], metrics["mdice"], metrics["mprecision"],
                               metrics["mrecall"], width=width)]
    lines.append(
        f"mIoU {_percent(metrics['miou'])}  mean class accuracy {_percent(metrics['mean_class_accuracy'])}  "
        f"pixel accuracy {_percent(metrics['pixel_accuracy'])}  ({metrics['pixels']} pixels)"
    )
    if metrics["absent_classes"]:
        lines.append(
            "absent from ground truth and prediction (NaN, left out of the means): "
            + ", ".join(metrics["absent_classes"])
        )
    return "\n".join(lines)


def _table_row(name: str, iou: float, dice: float, precision: float, recall: float, width: int) -> str:
    return (f"{name:<{width}} | {_percent(iou):>7} | {_percent(dice):>7} | "
            f"{_percent(precision):>11} | {_percent(recall):>8}")


def _percent(value: float) -> str:
    return "nan" if np.isnan(value) else f"{100 * value:.2f}"
