"""Epoch orders built once per node and shared by its processes and loader workers through files.

An epoch's order is a pure function of (dataset, seed, epoch, order settings), ~6 s to build at
10M samples; every loader worker of every process needs it. The first to ask builds it under a
file lock and publishes it as `<key>.npy` (temporary name, then rename) in a private directory
of the node's temporary space; the others wait for the lock and memory-map the file (read-only,
one copy in the page cache). Orders of epochs more than KEEP behind are deleted.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segdist.storage.cache import checked_root

KEEP = 2  # epochs of orders kept before the newest


def orders_root() -> Path:
    """$TMPDIR/segdist-orders-<uid>, private to this user (created 0700, refused if others can write it)."""
    return checked_root(Path(tempfile.gettempdir()) / f"segdist-orders-{os.getuid()}")


def shared_order(key: str, epoch: int, build: Callable[[], np.ndarray], root: Path | None = None) -> np.ndarray:
    """The order `key` of `epoch`: read from the node's file, or built and published by the first caller."""
    root = root or orders_root()
    path = root / f"{key}-e{epoch}.npy"
    fd = os.open(root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not path.is_file():
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(temporary, "wb") as f:
                np.save(f, np.ascontiguousarray(build(), np.int64))
            os.replace(temporary, path)
            _forget_old(root, key, epoch)
        return np.load(path, mmap_mode="r")  # under the lock: a writer of a later epoch may delete this file
    finally:
        os.close(fd)


def _forget_old(root: Path, key: str, epoch: int) -> None:
    """Delete this order's files more than KEEP epochs behind `epoch` (a process still mapping one keeps its pages)."""
    pattern = re.compile(rf"{re.escape(key)}-e(\d+)\.npy")
    for path in root.glob(f"{key}-e*.npy"):
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) < epoch - KEEP:
            path.unlink(missing_ok=True)
