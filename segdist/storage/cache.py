"""A node-local cache of whole remote shards, shared by every process on the node.

Layout of `cache_dir`: `<hash>-<name>` (a complete shard), `<hash>-<name>.lock` (its use lock) and
`<hash>-<name>.fetch` (its download lock), plus `.<hash>-<name>.<pid>.tmp` while one downloads.

- One download per shard at a time: the downloader holds the fetch lock (flock, exclusive); a
  second process wanting the same shard waits on it and then finds the finished file.
- Whole files only: a download goes to a temporary name in the same directory, then os.replace.
- Bounded: after each download, least recently used shards (by mtime, touched on every hit) are
  deleted until the total is at most `max_bytes`. A shard in use is never deleted: every reader
  holds a shared flock on its use lock from before it checks the file until it closes it, and the
  evictor only deletes a shard whose use lock it gets exclusively without waiting.
  (The bound can be passed while shards in use are larger than it.)
- Lock files are never deleted: deleting a lock file that another process has open would let two
  processes hold "the" lock at once. They are empty.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from . import urls

log = logging.getLogger(__name__)
SUFFIXES = (".lock", ".fetch", ".tmp")


def entry_name(url: str) -> str:
    """A file name unique to the URL and still readable: `<hash16>-<basename>`."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in urls.basename(url))
    return f"{digest}-{safe}"


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class ShardCache:
    """Whole shards of remote URLs on local disk, at most `max_bytes` (None: unbounded)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None):
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, url: str) -> Path:
        return self.root / entry_name(url)

    def acquire(self, url: str, download: Callable[[BinaryIO], None]) -> tuple[Path, Callable[[], None]]:
        """The cached file of `url` (downloaded by `download(file)` if missing) and its release function.

        The file cannot be evicted until the release function is called.
        """
        data = self.path(url)
        use_fd = os.open(data.with_name(data.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(use_fd, fcntl.LOCK_SH)
            if data.exists():
                os.utime(data)  # most recently used
            else:
                self._fill(data, download)
        except BaseException:
            os.close(use_fd)
            raise
        return data, lambda: os.close(use_fd)

    def _fill(self, data: Path, download: Callable[[BinaryIO], None]) -> None:
        with _flock(data.with_name(data.name + ".fetch"), fcntl.LOCK_EX):
            if data.exists():  # another process finished it while we waited
                os.utime(data)
                return
            temporary = data.with_name(f".{data.name}.{os.getpid()}.tmp")
            try:
                with open(temporary, "wb") as file:
                    download(file)
                os.replace(temporary, data)
            finally:
                temporary.unlink(missing_ok=True)
        self.evict()

    def evict(self) -> int:
        """Delete least recently used shards not in use until the total fits; returns bytes freed."""
        if self.max_bytes is None:
            return 0
        entries = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or path.name.endswith(SUFFIXES):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process just now
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if self._delete_unused(path):
                total -= size
                freed += size
        if total > self.max_bytes:
            log.warning("shard cache %s holds %d bytes in use, over its bound of %d", self.root, total,
                        self.max_bytes)
        return freed

    def _delete_unused(self, path: Path) -> bool:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # someone is reading it
        try:
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

