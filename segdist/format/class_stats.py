"""Figures derived from a split's statistics in dataset.json: class weights and the `segdist stats` table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import read_manifest


def class_weights(split: dict, method: str) -> list[float]:
    """Per-class loss weights from a split's pixel counts.

    inverse: total / (C * pixels_c), so a perfectly balanced dataset gets all ones.
    median_freq: median(f) / f_c with f_c = pixels_c / pixels of the images holding c
    (Eigen & Fergus, as SegNet uses for CamVid). sqrt_median_freq: its square root, a milder
    push towards the rare classes (median_freq's full weights make a model over-predict them).
    Classes never seen get weight 0.
    """
    pixels = np.asarray(split["class_pixels"], np.float64)
    seen = pixels > 0
    weights = np.zeros_like(pixels)
    if method == "inverse":
        weights[seen] = pixels.sum() / (seen.sum() * pixels[seen])
    elif method in ("median_freq", "sqrt_median_freq"):
        freq = pixels[seen] / np.asarray(split["class_image_pixels"], np.float64)[seen]
        weights[seen] = np.median(freq) / freq
        if method == "sqrt_median_freq":
            weights = np.sqrt(weights)
    else:
        raise ValueError(f"unknown class weighting '{method}'; choose inverse, median_freq or sqrt_median_freq")
    return [round(float(w), 6) for w in weights]


def stats_table(manifest: dict, split: str) -> str:
    """A plain-text table of one split: pixel share, image counts and class weights."""
    rec = manifest["splits"][split]
    pixels = np.asarray(rec["class_pixels"], np.float64)
    share = pixels / max(pixels.sum(), 1)
    inverse, median = class_weights(rec, "inverse"), class_weights(rec, "median_freq")
    width = max(len("class"), *(len(c) for c in manifest["classes"]))
    lines = [
        f"split {split}: {rec['samples']} samples in {len(rec['shards'])} shards, "
        f"ignored pixels {rec['ignore_pixels'] / max(rec['pixels'], 1):.2%}",
        f"mean {rec['mean']}  std {rec['std']}",
        f"{'id':>3}  {'class':<{width}}  {'pixels':>7}  {'images':>6}  {'w_inverse':>9}  {'w_median':>8}",
    ]
    for i, name in enumerate(manifest["classes"]):
        lines.append(
            f"{i:>3}  {name:<{width}}  {share[i]:>7.2%}  {rec['class_images'][i]:>6}  "
            f"{inverse[i]:>9.3f}  {median[i]:>8.3f}"
        )
    if rec["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k}={v}" for k, v in rec["skipped"].items()))
    if rec["dropped_annotations"]:
        lines.append("dropped annotations: " + ", ".join(f"{k}={v}" for k, v in rec["dropped_annotations"].items()))
    return "\n".join(lines)


def write_stats(shard_dir: str | Path, split: str | None = None, out: str | Path | None = None) -> list[Path]:
    """`segdist stats`: print each split's table and write its class histogram PNG; returns the PNGs."""
    from segdist.utils.viz import class_histogram

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    splits = [split] if split else list(manifest["splits"])
    written = []
    for name in splits:
        if name not in manifest["splits"]:
            raise DataError(f"{shard_dir} has no split '{name}'; it has {sorted(manifest['splits'])}")
        rec = manifest["splits"][name]
        print(stats_table(manifest, name) + "\n")
        png = Path(out or shard_dir) / f"class_hist_{name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        class_histogram(manifest["classes"], rec["class_pixels"], rec["class_images"], png, f"{shard_dir.name} {name}")
        print(f"class histogram: {png}")
        written.append(png)
    return written
