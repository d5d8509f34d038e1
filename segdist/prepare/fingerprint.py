"""The resume fingerprint of a split (every input and option hashed) and the order its shards hold the inputs."""

from __future__ import annotations

import functools
import hashlib
import random
from pathlib import Path

import msgspec

from segdist.format.manifest import FORMAT
from segdist.prepare.jobs import PrepareJob
from segdist.version import __version__

SHARD_ORDER = "shuffled/1"  # how shard_order arranges a split's inputs (in the resume fingerprint)


def _jsonable(obj: object) -> object:
    """JSON for what msgspec cannot encode itself: the convert function and its options, paths.
    (Specs and options are dataclasses, which msgspec encodes as objects of their fields.)"""
    if isinstance(obj, functools.partial):
        return {"function": obj.func, "args": obj.args, "keywords": obj.keywords}
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def fingerprint(job: PrepareJob, split: str) -> str:
    """Hash of everything that changes a split's output: inputs in full, every option, the code version."""
    settings = {"segdist": __version__, "format": FORMAT, "split": split, "classes": job.classes,
                "palette": job.palette, "ignore_index": job.ignore_index, "source": job.source,
                "convert": job.convert, "shard_size": job.shard_size, "shard_bytes": job.shard_bytes,
                "unpaired": dict(job.unpaired), "order": SHARD_ORDER}
    # msgspec, not json.dumps: a COCO train2017 draw's specs (their polygons) encode 10x faster
    text = msgspec.json.encode([settings, job.splits[split]], enc_hook=_jsonable, order="sorted")
    return hashlib.sha256(text).hexdigest()[:16]


def shard_order(job: PrepareJob, split: str) -> list:
    """A split's inputs in the order its shards hold them: shuffled, seeded by the split's name.

    Sources list inputs by sequence, city or id; in that order each shard would hold a few video
    sequences (CamVid train: 2 shards), and a training stream, which draws whole shards into its
    shuffle buffer, would mix the split far worse than a shuffled DataLoader does.
    """
    specs = list(job.splits[split])
    random.Random(f"segdist shard order {split}").shuffle(specs)
    return specs
