"""Whole-object operations on any URL kind: open, read, publish, exists, list, delete."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..utils.checksums import Digest
from ..utils.secrets import redact
from . import urls
from .cache import ShardCache
from .retry import Attempts, ChecksumMismatch, RetryPolicy, StorageStats, give_up, with_retries
from .stream import open_uncached

DEFAULT_POLICY = RetryPolicy()


def open_stream(url: urls.Url, *, start: int = 0, end: int | None = None, retry: RetryPolicy = DEFAULT_POLICY,
                stats: StorageStats | None = None, cache_dir: str | os.PathLike | None = None,
                cache_max_bytes: int | None = None, expected: Digest | None = None) -> BinaryIO:
    """Bytes [start, end) of `url` as a binary file object that retries and resumes on its own.

    With `cache_dir`, a remote object is first downloaded whole into the node's cache (once, even
    with many processes asking) and read from there. `expected` (the shard's size and sha256 from
    dataset.json) is checked where it is cheap: a local file's size on open, a cached download's
    size and hash before it is published (a mismatch is downloaded again within `retry`). Raises
    ShardUnavailable when the object cannot be had (or not as expected) within `retry`; `stats`
    (default: this process's) counts retries and give-ups.
    """
    url = str(url)
    if urls.kind(url) == "local":
        _check_local_size(url, expected, stats)
    if cache_dir is None or urls.kind(url) == "local":
        return open_uncached(url, start, end, retry, stats)
    path, release = _acquire_verified(ShardCache(cache_dir, cache_max_bytes), url, expected, retry, stats)
    try:
        stream = open_uncached(str(path), start, end, retry, stats)
    except BaseException:
        release()
        raise
    stream.raw.on_close.append(release)
    return stream


def _check_local_size(url: str, expected: Digest | None, stats: StorageStats | None) -> None:
    """Give up on a local shard whose size is not the recorded one (no retry mends a file on disk)."""
    if expected is None:
        return
    try:
        size = urls.local_path(url).stat().st_size
    except FileNotFoundError:
        return  # reported by the open, as before
    if size != expected.size:
        give_up(url, f"size {size} bytes, dataset.json records {expected.size}: changed or truncated after "
                     "prepare", stats)


def prefetch(url: urls.Url, cache_dir: str | os.PathLike, *, cache_max_bytes: int | None = None,
             retry: RetryPolicy = DEFAULT_POLICY, stats: StorageStats | None = None,
             expected: Digest | None = None) -> None:
    """Download a remote object whole into the node cache unless it is there (as `open_stream` would)."""
    _acquire_verified(ShardCache(cache_dir, cache_max_bytes), str(url), expected, retry, stats)[1]()


def discard(url: urls.Url, cache_dir: str | os.PathLike) -> bool:
    """Delete `url`'s cached copy unless a process is reading it; returns whether it is gone."""
    return ShardCache(cache_dir).discard(str(url))


def _acquire_verified(cache: ShardCache, url: str, expected: Digest | None, retry: RetryPolicy,
                      stats: StorageStats | None) -> tuple[Path, Callable[[], None]]:
    """The cache's file of `url`; a download that is not `expected` is fetched again, then given up."""
    def download(target: BinaryIO) -> None:
        with open_uncached(url, 0, None, retry, stats) as source:
            shutil.copyfileobj(source, target, 1 << 20)

    attempts = Attempts(url, retry, stats)
    while True:
        try:
            return cache.acquire(url, download, expected)
        except ChecksumMismatch as error:
            attempts.failed(error)


def read_bytes(url: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY, stats: StorageStats | None = None) -> bytes:
    with open_stream(url, retry=retry, stats=stats) as stream:
        return stream.read()


def read_json(url: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY, stats: StorageStats | None = None):
    data = read_bytes(url, retry=retry, stats=stats)
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise ValueError(f"{redact(url)}: not valid JSON ({error})") from None


def publish_file(local_path: str | os.PathLike, url: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY,
                 stats: StorageStats | None = None) -> None:
    """Put a finished local file at `url` so that readers see it complete or not at all."""
    url, kind = str(url), urls.kind(url)
    if kind == "s3":
        from . import s3

        return with_retries(url, lambda: s3.put_file(str(local_path), url, retry.timeout), retry, stats)
    target = _local_only(url, "publish to")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(local_path, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def exists(url: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY, stats: StorageStats | None = None) -> bool:
    url, kind = str(url), urls.kind(url)
    if kind == "s3":
        from . import s3

        return with_retries(url, lambda: s3.exists(url, retry.timeout), retry, stats)
    if kind == "http":
        from .http import head_status

        return with_retries(url, lambda: head_status(url, retry.timeout), retry, stats) < 300
    return _local_only(url, "check").exists()


def list_names(prefix: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY,
               stats: StorageStats | None = None) -> list[str]:
    """Sorted names of the objects (files) directly under `prefix`; [] when there is none."""
    prefix, kind = str(prefix), urls.kind(prefix)
    if kind == "s3":
        from . import s3

        return with_retries(prefix, lambda: s3.list_names(prefix, retry.timeout), retry, stats)
    directory = _local_only(prefix, "list")
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def delete(url: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY, stats: StorageStats | None = None) -> None:
    """Remove the object; removing one that is not there is not an error."""
    url, kind = str(url), urls.kind(url)
    if kind == "s3":
        from . import s3

        return with_retries(url, lambda: s3.delete(url, retry.timeout), retry, stats)
    _local_only(url, "delete").unlink(missing_ok=True)


def _local_only(url: str, action: str) -> Path:
    """The local path of `url`; http and pipe sources can only be read (no writing, no listing)."""
    if urls.kind(url) in ("http", "pipe"):
        raise ValueError(f"cannot {action} {redact(url)}: {urls.kind(url)} sources can only be read "
                         f"(use a local directory or an s3:// prefix)")
    return urls.local_path(url)


@dataclass(frozen=True)
class ObjectInfo:
    """An object found by `list_objects`: its name relative to the prefix listed, its size and ETag (None locally)."""

    name: str
    size: int
    etag: str | None = None


def list_objects(prefix: urls.Url, *, recursive: bool = False, retry: RetryPolicy = DEFAULT_POLICY,
                 stats: StorageStats | None = None) -> list[ObjectInfo]:
    """The objects (files) under `prefix`, sorted by name: directly under it, or at any depth ('a/b.png')."""
    prefix, kind = str(prefix), urls.kind(prefix)
    if kind == "s3":
        from . import s3

        found = with_retries(prefix, lambda: s3.list_objects(prefix, recursive, retry.timeout), retry, stats)
        return [ObjectInfo(*entry) for entry in found]
    directory = _local_only(prefix, "list")
    if not directory.is_dir():
        return []
    paths = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(ObjectInfo(p.relative_to(directory).as_posix(), p.stat().st_size) for p in paths if p.is_file())


def publish_bytes(data: bytes, url: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY,
                  stats: StorageStats | None = None) -> None:
    """Put `data` at `url` so that readers see it complete or not at all (a small record, a manifest)."""
    url, kind = str(url), urls.kind(url)
    if kind == "s3":
        from . import s3

        return with_retries(url, lambda: s3.put_bytes(data, url, retry.timeout), retry, stats)
    target = _local_only(url, "publish to")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def copy_object(source: urls.Url, target: urls.Url, *, retry: RetryPolicy = DEFAULT_POLICY,
                stats: StorageStats | None = None) -> None:
    """Copy an object within one store (server-side for S3: no byte passes through this process); the target
    appears complete or not at all."""
    source, target = str(source), str(target)
    if urls.kind(source) == "s3" and urls.kind(target) == "s3":
        from . import s3

        return with_retries(target, lambda: s3.copy(source, target, retry.timeout), retry, stats)
    publish_file(_local_only(source, "copy"), target, retry=retry, stats=stats)
