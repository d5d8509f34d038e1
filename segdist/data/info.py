"""What training reads from dataset.json: classes, palette, ignore index, splits and their shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdist import storage
from segdist.config import DataConfig
from segdist.errors import DataError
from segdist.format.manifest import MANIFEST, read_manifest, shard_paths

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUMMED_STATS = ("samples", "class_pixels", "class_images", "class_image_pixels")


def split_names(value: str | list[str]) -> list[str]:
    """`data.train_split` as a list: 'train' or [train, val]."""
    return [value] if isinstance(value, str) else list(value)


@dataclass
class DatasetInfo:
    """What training needs from dataset.json; `root` is a directory or a URL prefix (see storage)."""

    root: Path | str
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def ignore_index(self) -> int:
        return self.manifest["ignore_index"]

    @property
    def palette(self) -> list[list[int]]:
        return self.manifest["palette"]

    def split(self, name: str) -> dict:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.root} has no split '{name}'; it has {sorted(self.manifest['splits'])}")
        return self.manifest["splits"][name]

    def combined(self, names: str | list[str]) -> dict:
        """Sample count and class statistics summed over one or several splits (train+val training)."""
        records = [self.split(name) for name in split_names(names)]
        return {key: _summed([r[key] for r in records]) for key in SUMMED_STATS}

    def shards(self, names: str | list[str]) -> tuple[list[str], list[dict]]:
        """Shard locations and manifest records of one or several splits, checked to hold samples."""
        urls, records = [], []
        for name in split_names(names):
            if not self.split(name)["samples"]:
                raise DataError(f"{self.root}: split '{name}' has no samples")
            if storage.is_local(self.root):
                urls += [str(p) for p in shard_paths(Path(self.root), self.manifest, name)]
            else:  # remote: a missing shard shows when it is read (retried, then counted)
                urls += [storage.join(self.root, s["name"]) for s in self.split(name)["shards"]]
            records += self.split(name)["shards"]
        return urls, records


def _summed(values: list) -> int | list:
    if isinstance(values[0], list):
        return np.sum(np.asarray(values, np.int64), axis=0).tolist()
    return int(sum(values))


def load_dataset_info(shards: str | Path) -> DatasetInfo:
    """The manifest of a prepared dataset: a local directory or a remote prefix (http(s)://, s3://, pipe:)."""
    if storage.is_local(shards):
        root = storage.urls.local_path(shards)
        if not root.is_dir():
            raise DataError(f"data.shards: {root} is not a directory; run `segdist prepare ... --out {root}` first")
        return DatasetInfo(root, read_manifest(root))
    url = storage.join(shards, MANIFEST)
    try:
        return DatasetInfo(str(shards), storage.read_json(url))
    except (OSError, ValueError) as exc:
        raise DataError(f"data.shards: cannot read {url}: {exc}") from None


def normalization(cfg: DataConfig, info: DatasetInfo) -> tuple[tuple, tuple]:
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(info.manifest["mean"]), tuple(info.manifest["std"])
