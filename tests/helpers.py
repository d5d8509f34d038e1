"""Helpers for the tests: the real data path, tiny COCO trees, reading shards without segdist."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A real dataset beside the checkout; its absence skips locally and fails in CI."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI must provide ../shared/data")
        pytest.skip(f"real-data test: {path} is missing")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*argv) -> None:
    from segdist.cli import main

    main([str(a) for a in argv])


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None,
               seed: int = 0) -> tuple[Path, Path]:
    """A tiny COCO tree: noise JPEGs for `images` ({id, width, height[, file_name]}) plus the JSON."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for img in images:
        img.setdefault("file_name", f"{img['id']:06d}.jpg")
        pixels = rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / img["file_name"], quality=90)
    for i, ann in enumerate(annotations, 1):
        ann.setdefault("id", i)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("bbox", [0, 0, 1, 1])
    categories = categories or [
        {"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}
    ]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, ann_file


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def read_shards(shard_dir: Path, split: str) -> list[dict]:
    """Every sample of a split, read with plain webdataset and PIL (no segdist code)."""
    urls = sorted(str(p) for p in Path(shard_dir).glob(f"{split}-*.tar"))
    samples = []
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        image_bytes = s.get("jpg") or s.get("png")
        samples.append({
            "key": s["__key__"],
            "image_bytes": image_bytes,
            "image": np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB")),
            "label": np.asarray(Image.open(io.BytesIO(s["seg.png"]))),
            "meta": json.loads(s["json"]),
            "url": s["__url__"],
        })
    return samples


def manifest(shard_dir: Path) -> dict:
    return json.loads((Path(shard_dir) / "dataset.json").read_text())
