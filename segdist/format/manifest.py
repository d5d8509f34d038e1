"""dataset.json: what prepare writes and training reads (classes, palette, ignore index, splits, shards)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segdist.errors import DataError

MANIFEST = "dataset.json"
# 2: shard records list `offsets`; shard k of a split may have parts k_1, k_2, ...; 3: and each sample's `classes`
FORMAT = "segdist-shards/3"
IGNORE_INDEX = 255  # the default ignore index of label maps with up to 255 classes
MAX_LABEL_VALUE = 65535  # label maps are at most uint16


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


def label_dtype(num_classes: int, ignore_index: int = IGNORE_INDEX) -> type:
    """uint8 label maps unless the class ids or the ignore index need more."""
    return np.uint8 if max(num_classes - 1, ignore_index) <= 255 else np.uint16
