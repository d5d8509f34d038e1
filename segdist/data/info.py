"""What training reads from dataset.json: classes, palette, ignore index, splits and their shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdist import storage
from segdist.config import DataConfig
from segdist.errors import DataError
from segdist.format.manifest import MANIFEST, check_names, read_manifest, shard_digest, shard_paths
from segdist.utils.checksums import Digest
from segdist.utils.secrets import is_redacted, redact

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
            raise DataError(f"{redact(self.root)} has no split '{name}'; it has {sorted(self.manifest['splits'])}")
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
                raise DataError(f"{redact(self.root)}: split '{name}' has no samples")
            if storage.is_local(self.root):
                urls += [str(p) for p in shard_paths(Path(self.root), self.manifest, name)]
            else:  # remote: a missing shard shows when it is read (retried, then counted)
                urls += [self.shard_url(s["name"]) for s in self.split(name)["shards"]]
            records += self.split(name)["shards"]
        return urls, records

    def shard_url(self, name: str) -> str:
        """Where the shard `name` is read from (the same string `shards` gives)."""
        return str(Path(self.root) / name) if storage.is_local(self.root) else storage.join(self.root, name)

    def digests(self) -> dict[str, Digest]:
        """{shard URL: its recorded size and sha256} over every split; shards recorded without a size are left out."""
        found = {}
        for record in self.manifest["splits"].values():
            for shard in record.get("shards", []):
                if (digest := shard_digest(shard)) is not None:
                    found[self.shard_url(shard["name"])] = digest
        return found


def _summed(values: list) -> int | list:
    if isinstance(values[0], list):
        return np.sum(np.asarray(values, np.int64), axis=0).tolist()
    return int(sum(values))


def load_dataset_info(shards: str | Path) -> DatasetInfo:
    """The manifest of a prepared dataset: a local directory or a remote prefix (http(s)://, s3://, pipe:)."""
    if is_redacted(shards):  # from a run's config.yaml, where a credential is written as ***
        raise DataError(f"data.shards {shards!r} holds a credential that the run's config.yaml leaves out; give "
                        f"it again (`segdist train ... data.shards=URL --resume`, `segdist evaluate --shards URL`)")
    if storage.is_local(shards):
        root = storage.urls.local_path(shards)
        if not root.is_dir():
            raise DataError(f"data.shards: {root} is not a directory; run `segdist prepare ... --out {root}` first")
        return DatasetInfo(root, read_manifest(root))
    url = storage.join(shards, MANIFEST)
    try:
        manifest = storage.read_json(url)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.shards: cannot read {redact(url)}: {redact(exc)}") from None
    return DatasetInfo(str(shards), check_names(manifest, redact(url)))


def normalization(cfg: DataConfig, info: DatasetInfo) -> tuple[tuple, tuple]:
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(info.manifest["mean"]), tuple(info.manifest["std"])
