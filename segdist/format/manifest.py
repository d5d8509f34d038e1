"""dataset.json: what prepare writes and training reads (classes, palette, ignore index, splits, shards)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.utils.checksums import Digest
from segdist.utils.files import check_plain_name

MANIFEST = "dataset.json"
# 2: shard records list `offsets`; shard k of a split may have parts k_1, k_2, ...; 3: and each sample's `classes`;
# 4: and the shard's `sha256` (optional when reading; its size is `bytes`, recorded since 1)
FORMAT = "segdist-shards/4"
IGNORE_INDEX = 255  # the default ignore index of label maps with up to 255 classes
MAX_LABEL_VALUE = 65535  # label maps are at most uint16


def read_manifest(shard_dir: Path) -> dict:
    """Load `shard_dir/dataset.json`, with a clear error when the directory was never prepared."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path} does not exist: run `segdist prepare ... --out {shard_dir}` first")
    with open(path) as f:
        return check_names(json.load(f), path)


def check_names(manifest: dict, where: Path | str) -> dict:
    """`manifest` when its split and shard names are plain file names (utils.files.PLAIN_NAME), else a
    DataError naming `where`: a manifest is data, maybe downloaded, and its names become paths,
    URLs and `pipe:` command words, which must stay inside the dataset."""
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    for split, record in (splits if isinstance(splits, dict) else {}).items():
        check_plain_name(split, f"{where}: a split name")
        for shard in (record.get("shards") or []) if isinstance(record, dict) else []:
            check_plain_name(shard.get("name") if isinstance(shard, dict) else shard,
                             f"{where} (split '{split}'): a shard name")
    return manifest


def shard_paths(shard_dir: Path, manifest: dict, split: str) -> list[Path]:
    """The shard files of a split, checked to exist."""
    if split not in manifest["splits"]:
        raise DataError(f"{shard_dir} has no split '{split}'; it has {sorted(manifest['splits'])}")
    paths = [Path(shard_dir) / s["name"] for s in manifest["splits"][split]["shards"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{missing[0]} is listed in {MANIFEST} but missing")
    return paths


def shard_digest(record: dict) -> Digest | None:
    """The size (`bytes`) and sha256 a shard record promises; None for a record without a size."""
    size, sha256 = record.get("bytes"), record.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    return Digest(size, sha256 if isinstance(sha256, str) else None)


def label_dtype(num_classes: int, ignore_index: int = IGNORE_INDEX) -> type:
    """uint8 label maps unless the class ids or the ignore index need more."""
    return np.uint8 if max(num_classes - 1, ignore_index) <= 255 else np.uint16
