"""Palettes, colour masks, overlays and the PNG charts people look at instead of tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdist.utils.files import atomic_path

IGNORE_COLOUR = (255, 255, 255)


def default_palette(num_classes: int) -> list[list[int]]:
    """PASCAL VOC's bit-interleaved palette: background black, distinct colours after it."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def colorize(label: np.ndarray, palette: list[list[int]], ignore_index: int = 255) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours; ignore pixels white, unknown ids grey."""
    lut = np.full((max(len(palette), ignore_index + 1, int(label.max(initial=0)) + 1), 3), 128, np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[ignore_index] = IGNORE_COLOUR
    return lut[label]


def overlay(rgb: np.ndarray, colour: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend colours over the image where the label is not background (class 0)."""
    out = rgb.astype(np.float32)
    fg = label != 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour[fg].astype(np.float32)
    return out.round().astype(np.uint8)


def panel(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """Images of equal height side by side, separated by white gaps."""
    h = images[0].shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for img in images:
        parts += [img, spacer]
    return np.concatenate(parts[:-1], axis=1)


def write_overlays(examples: list, palette: list[list[int]], ignore_index: int, out: Path) -> dict[str, np.ndarray]:
    """Input | ground truth | prediction panels, written as `out/<i>.png`; returns them by tracker tag.

    `examples` are (uint8 image CHW, label HxW, prediction HxW) arrays, the image possibly
    resized (`data.val_size`): it is brought to the label's size.
    """
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, (image, label, pred) in enumerate(examples):
        rgb = np.asarray(image).transpose(1, 2, 0)
        if rgb.shape[:2] != label.shape:
            rgb = cv2.resize(rgb, label.shape[::-1], interpolation=cv2.INTER_LINEAR)
        gt_c, pr_c = (colorize(mask, palette, ignore_index) for mask in (label, pred))
        images[f"val/overlay_{i}"] = panel(rgb, overlay(rgb, gt_c, label), overlay(rgb, pr_c, pred))
        save_png(images[f"val/overlay_{i}"], out / f"{i}.png")
    return images


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an image atomically (temporary name, then rename)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:  # noqa: ANN001
    """Write a figure as PNG under a temporary name, then rename it; close the figure."""
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)


def save_jpeg(array: np.ndarray, path: Path, quality: int = 90) -> None:
    """Write an RGB image as JPEG atomically (temporary name, then rename)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="JPEG", quality=quality)


def class_histogram(classes: list[str], pixels: list[int], images: list[int], path: Path, title: str = "") -> None:
    """Bar charts of pixel share and image count per class, written as PNG."""
    plt = _pyplot()

    share = np.asarray(pixels, np.float64) / max(sum(pixels), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.5 * len(classes) + 4), 4.5))
    axes[0].bar(range(len(classes)), share * 100, color="tab:blue")
    axes[0].set_ylabel("pixel share (%)")
    axes[0].set_yscale("log")
    axes[1].bar(range(len(classes)), images, color="tab:orange")
    axes[1].set_ylabel("images containing the class")
    for ax in axes:
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)


def confusion_png(confusion: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion heatmap (rows = ground truth; empty rows stay 0), written as PNG."""
    plt = _pyplot()

    counts = np.asarray(confusion, np.float64)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    n = len(class_names)
    side = max(5, 0.45 * n + 3)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth row")
    if n <= 25:
        for (row, col), value in np.ndenumerate(normalised):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)


def per_class_iou_png(metrics: dict, path: Path, title: str = "") -> None:
    """Horizontal bars of per-class IoU (metrics_from_confusion's) with the mIoU as a line; NaN classes empty."""
    plt = _pyplot()

    names = list(metrics["per_class"])
    iou = np.array([metrics["per_class"][name]["iou"] for name in names], np.float64)
    missing = np.isnan(iou)
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(names) + 1.5)))
    ax.barh(range(len(names)), np.where(missing, 0, iou), color="tab:blue")
    for row, value in enumerate(iou):
        label = "absent (NaN)" if np.isnan(value) else f"{value:.3f}"
        ax.text(0 if np.isnan(value) else value, row, f" {label}", va="center", fontsize=7, color="dimgrey")
    if not np.isnan(metrics["miou"]):
        ax.axvline(metrics["miou"], color="tab:red", linestyle="--", label=f"mIoU {metrics['miou']:.3f}")
        ax.legend(loc="lower right")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # first class on top, as in the tables
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)
