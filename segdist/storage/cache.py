"""A node-local cache of whole remote shards, shared by every process on the node.

Layout of `cache_dir`: `<hash>-<name>` (a complete shard), `<hash>-<name>.lock` (its use lock) and
`<hash>-<name>.fetch` (its download lock), plus `.<hash>-<name>.<random>.tmp` while one downloads.

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
- Verified: when the caller knows the shard's size and sha256 (dataset.json), a download is hashed
  as it is written and published only when both match (else ChecksumMismatch, nothing published);
  a cached file of another size is fetched again.
- Private: the directory is created 0700, and an existing one must belong to this user and be
  writable by no one else (a DataError otherwise), since whoever can write into it can swap the
  shards training reads. Temporary names are random and every file is opened without following
  a symlink (O_NOFOLLOW; temporaries also O_EXCL), with the umask's permissions.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import DataError
from ..utils.checksums import Digest, HashingWriter
from . import urls
from .retry import ChecksumMismatch

log = logging.getLogger(__name__)
SUFFIXES = (".lock", ".fetch", ".tmp")


def default_root() -> Path:
    """The node cache's default place: $XDG_CACHE_HOME/segdist/shards, else ~/.cache/segdist/shards."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segdist" / "shards"


def entry_name(url: str) -> str:
    """A file name unique to the URL and still readable: `<hash16>-<basename>`."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in urls.basename(url))
    return f"{digest}-{safe}"


def _open_lock(path: Path) -> int:
    """A lock file's descriptor; a symlink planted at its name is refused, never followed."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(f"shard cache: {path} is a symbolic link; refusing to follow it (remove it)") from None
        raise


def checked_root(root: Path) -> Path:
    """`root`, created 0700 if missing; an existing one must be this user's and writable by no one else."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.getuid():
        raise DataError(f"cache directory {root} is owned by uid {info.st_uid}, not by this user (uid {os.getuid()}): "
                        "its owner could swap the shards read from it; give data.cache_dir a directory of your own")
    if info.st_mode & 0o022:
        raise DataError(f"cache directory {root} has mode {stat.S_IMODE(info.st_mode):04o}, writable by other users, "
                        f"who could swap the shards read from it: run chmod 700 {root}")
    return root


def _holds(path: Path, expected: Digest | None) -> bool:
    """Whether `path` is a complete cached file: a regular file, of the expected size when known."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and (expected is None or info.st_size == expected.size)


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class ShardCache:
    """Whole shards of remote URLs on local disk, at most `max_bytes` (None: unbounded)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None):
        self.root, self.max_bytes = checked_root(Path(root)), max_bytes

    def path(self, url: str) -> Path:
        return self.root / entry_name(url)

    def acquire(self, url: str, download: Callable[[BinaryIO], None],
                expected: Digest | None = None) -> tuple[Path, Callable[[], None]]:
        """The cached file of `url` (downloaded by `download(file)` if missing) and its release function.

        With `expected`, a cached file must have its size and a download its size and sha256
        (ChecksumMismatch otherwise). The file cannot be evicted until the release function is called.
        """
        data = self.path(url)
        use_fd = _open_lock(data.with_name(data.name + ".lock"))
        try:
            fcntl.flock(use_fd, fcntl.LOCK_SH)
            if _holds(data, expected):
                os.utime(data)  # most recently used
            else:
                self._fill(data, download, expected)
        except BaseException:
            os.close(use_fd)
            raise
        return data, lambda: os.close(use_fd)

    def _fill(self, data: Path, download: Callable[[BinaryIO], None], expected: Digest | None) -> None:
        with _flock(data.with_name(data.name + ".fetch"), fcntl.LOCK_EX):
            if _holds(data, expected):  # another process finished it while we waited
                os.utime(data)
                return
            for stale in self.root.glob(f".{data.name}.*.tmp"):  # left by a crash: no one else downloads it now
                stale.unlink(missing_ok=True)
            temporary = data.with_name(f".{data.name}.{secrets.token_hex(8)}.tmp")
            try:
                _download_verified(temporary, download, expected)
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

    def discard(self, url: str) -> bool:
        """Delete `url`'s cached copy (past its last use) unless it is in use; returns whether it is gone."""
        return self._delete_unused(self.path(url))

    def _delete_unused(self, path: Path) -> bool:
        fd = _open_lock(path.with_name(path.name + ".lock"))
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


def _download_verified(temporary: Path, download: Callable[[BinaryIO], None], expected: Digest | None) -> None:
    """`download` into a new file at `temporary` (never an existing file or a symlink), hashed as it is
    written; ChecksumMismatch when it is not the `expected` shard."""
    file = HashingWriter(os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                           | os.O_CLOEXEC, 0o666), "wb"))
    try:
        download(file)
    finally:
        file.close()
    problem = expected.mismatch(file.digest()) if expected is not None else None
    if problem is not None:
        raise ChecksumMismatch(f"the download has {problem}")
