"""dataset.json: the contract between prepare and train, and the figures derived from it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from segdist.sources.common import DataError

MANIFEST = "dataset.json"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_manifest(shard_dir: Path) -> dict:
    """Load `shard_dir/dataset.json`, with a clear error when the directory was never prepared."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path} does not exist: run `segdist prepare ... --out {shard_dir}` first")
    with open(path) as f:
        return json.load(f)


def shard_paths(shard_dir: Path, manifest: dict, split: str) -> list[Path]:
    """The shard files of a split, checked to exist."""
    if split not in manifest["splits"]:
        raise DataError(f"{shard_dir} has no split '{split}'; it has {sorted(manifest['splits'])}")
    paths = [Path(shard_dir) / s["name"] for s in manifest["splits"][split]["shards"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{missing[0]} is listed in {MANIFEST} but missing")
    return paths


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
