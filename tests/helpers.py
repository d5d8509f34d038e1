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


REPO = Path(__file__).resolve().parents[1]
# A tiny, fast training recipe for the tests (on top of configs/demo.yaml). The model is timm's
# test_resnet under a 16-channel U-Net decoder (0.45M parameters): a checkpoint of about 7 MB, not 130 MB
# (weights, EMA and Adam state of the demo's U-Net-ResNet10t). DEMO_MODEL puts that model back
# for the tests that need its capacity or its checkpoint size.
SMALL = ["data.crop_size=[64,64]", "data.base_size=96", "data.val_size=96", "data.batch_size=4",
         "data.val_batch_size=4", "data.workers=1", "data.shuffle_window=16", "train.log_every=1",
         "model.encoder=test_resnet", "model.arch_kwargs={decoder_channels: [16, 16, 16, 16, 16]}"]
DEMO_MODEL = ["model.encoder=resnet10t", "model.arch_kwargs={}"]


def launcher(processes: int = 2, *extra: str) -> list[str]:
    """`accelerate launch` with `processes` CPU (gloo) processes on a free port."""
    import sys

    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *extra]


def train_cmd(shards: Path, runs: Path, *overrides: str, launch: list[str] | None = None,
              resume: bool = False, overwrite: bool = False) -> list[str]:
    """The command line of `segdist train` on the demo recipe, SMALL, and `overrides` (`--resume`, `--overwrite`)."""
    import sys

    prefix = launch if launch is not None else [sys.executable]
    cmd = [*prefix, "-m", "segdist", "train", "--config", str(REPO / "configs/demo.yaml"), f"data.shards={shards}",
           f"train.runs_dir={runs}", *SMALL, *overrides]
    return cmd + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])


def run_train(shards: Path, runs: Path, *overrides: str, launch: list[str] | None = None, resume: bool = False,
              overwrite: bool = False, env: dict | None = None, expect: int = 0, timeout: float = 600) -> str:
    """Run `segdist train` to its end; asserts the exit status; returns stdout + stderr."""
    import subprocess

    result = subprocess.run(train_cmd(shards, runs, *overrides, launch=launch, resume=resume, overwrite=overwrite),
                            capture_output=True, text=True, timeout=timeout, cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == (expect == 0) and (expect in (0, -1) or result.returncode == expect), \
        f"exit {result.returncode}, expected {expect}:\n{output[-6000:]}"
    return output


def rank_lines(output: str) -> dict[int, dict]:
    """The closing `[rank r/w] ... steps=N weights=H` line of each process."""
    import re

    found = re.findall(r"\[rank (\d+)/(\d+)\] node=\S+ batches=(\d+) steps=(\d+) weights=(\w+)", output)
    return {int(r): {"world": int(w), "batches": int(b), "steps": int(s), "weights": h} for r, w, b, s, h in found}


def train_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def synthetic_shards(root: Path, *, images: int, val_images: int, seed: int, width: int, height: int,
                     shard_size: int | None = None, keep_empty: bool = False) -> Path:
    """Synthetic COCO (person, bicycle, car) under root/raw, prepared into root/shards (train and val)."""
    from segdist.synth.coco import write_synthetic_coco

    write_synthetic_coco(root / "raw", images=images, val_images=val_images, seed=seed, width=width, height=height)
    for split in ("train", "val"):
        run_cli("prepare", "coco", "--images", root / "raw" / split, "--annotations",
                root / "raw" / "annotations" / f"instances_{split}.json", "--classes", "person,bicycle,car",
                "--split", split, "--out", root / "shards", *(["--shard-size", shard_size] if shard_size else []),
                *(["--keep-empty"] if keep_empty else []))
    return root / "shards"


def train_plan(cfg, info, processes: int = 1, accumulate: int = 1, seed: int = 0):  # noqa: ANN001, ANN201
    """The training plan (order and shape) a run of `processes` x `accumulate` with `cfg` uses."""
    from segdist.data.plan import Shape, plan_for

    return plan_for(cfg, info, seed, Shape(cfg.batch_size, processes, accumulate))


def constant_class_miou(confusion: list[list[int]]) -> float:
    """The best mIoU a model predicting one class everywhere scores on the pixels of `confusion` (gt x pred).

    Predicting class c everywhere gives c an IoU of its share of the pixels and every other class
    present in the ground truth 0; classes absent from both do not count (segdist's NaN-mean).
    """
    import numpy as np

    in_ground_truth = np.asarray(confusion).sum(axis=1)
    present = max(int((in_ground_truth > 0).sum()), 1)
    return float(in_ground_truth.max() / in_ground_truth.sum() / present)
