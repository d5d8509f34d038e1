"""S3 and S3-compatible stores through s3fs: ranged streaming GETs, uploads, listing.

Endpoint and credentials come from the environment exactly as the AWS CLI takes them:
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), honoured by botocore itself since 1.31, and
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or the profile files (`AWS_PROFILE`); nothing comes
from segdist's config files. s3fs's and botocore's own retries are switched off (one try each) so
that every retry goes through `retry.Attempts`, resumes at the right byte and is counted.

Fork safety: an s3fs filesystem is bound to the event loop of the process that made it
(fsspec raises "This class is not fork-safe" in a child). Filesystems are therefore made lazily
and kept per process id, so a DataLoader worker forked after the parent read `dataset.json` from
S3 makes its own.
"""

from __future__ import annotations

import os
import threading

from .retry import boto_status

_filesystems: dict[tuple, object] = {}
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the moment of fork


os.register_at_fork(after_in_child=_new_lock_after_fork)


def filesystem(timeout: float):
    """This process's s3fs filesystem for the current endpoint/credential environment."""
    key = (os.getpid(), timeout) + tuple(os.environ.get(name) for name in (
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION"))
    with _lock:
        if key not in _filesystems:
            try:
                import s3fs
            except ImportError as error:
                raise ImportError("s3:// URLs need s3fs: pip install 'segdist[s3]'") from error
            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, config_kwargs={
                "connect_timeout": timeout, "read_timeout": timeout, "retries": {"total_max_attempts": 1}})
            fs.retries = 1  # a class attribute in s3fs: one try per call, our Attempts do the rest
            _filesystems[key] = fs
        return _filesystems[key]


def _sync(fs, coroutine_function, *args, timeout: float, **kwargs):
    from fsspec.asyn import sync

    return sync(fs.loop, coroutine_function, *args, timeout=timeout, **kwargs)


class S3Body:
    """The streaming body of one ranged GET."""

    def __init__(self, fs, body, remaining: int, timeout: float):
        self.fs, self.body, self.remaining, self.timeout = fs, body, remaining, timeout

    def readinto(self, buffer: memoryview) -> int:
        chunk = _sync(self.fs, self.body.read, len(buffer), timeout=self.timeout)
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self.body.close()


def open_s3(url: str, start: int, end: int | None, timeout: float) -> S3Body:
    """GET `url` from byte `start` (to `end`, exclusive) as a stream."""
    fs = filesystem(timeout)
    bucket, key, _ = fs.split_path(url)
    extra = {}
    if start or end is not None:
        extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    try:
        response = _sync(fs, fs._call_s3, "get_object", Bucket=bucket, Key=key, timeout=timeout, **extra)
    except OSError as error:
        if boto_status(error) == 416:
            return S3Body(fs, _EmptyBody(), 0, timeout)  # the range starts at or past the end
        raise
    return S3Body(fs, response["Body"], response["ContentLength"], timeout)


def put_file(local_path: str, url: str, timeout: float) -> None:
    """Upload a finished file: S3 makes the object visible complete, or not at all."""
    filesystem(timeout).put_file(local_path, url)


def exists(url: str, timeout: float) -> bool:
    return filesystem(timeout).exists(url)


def list_names(prefix: str, timeout: float) -> list[str]:
    fs = filesystem(timeout)
    try:
        entries = fs.ls(prefix.rstrip("/"), detail=True)
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "file")


def delete(url: str, timeout: float) -> None:
    filesystem(timeout).rm_file(url)


def put_bytes(data: bytes, url: str, timeout: float) -> None:
    """One PUT of `data`: the object appears whole or not at all."""
    filesystem(timeout).pipe_file(url, data)


def copy(source: str, target: str, timeout: float) -> None:
    """A server-side copy: no byte passes through this process."""
    filesystem(timeout).copy(source, target)


def list_objects(prefix: str, recursive: bool, timeout: float) -> list[tuple[str, int, str | None]]:
    """(name relative to `prefix`, size, ETag) of the objects under `prefix`: directly under it, or at any depth."""
    fs = filesystem(timeout)
    root = prefix.rstrip("/")
    try:
        entries = fs.find(root, detail=True).values() if recursive else fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    base = fs.split_path(root)[1]
    found = []
    for entry in entries:
        if entry["type"] != "file":
            continue
        key = fs.split_path(entry["name"])[1]
        name = key[len(base):].lstrip("/") if base else key
        if name and not name.endswith("/"):
            found.append((name, int(entry["size"]), entry.get("ETag")))
    return sorted(found)


class _EmptyBody:
    async def read(self, amount: int) -> bytes:
        return b""

    def close(self) -> None:
        pass
