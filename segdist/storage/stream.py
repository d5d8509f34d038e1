"""One readable stream over any URL kind that survives transient faults by resuming.

`open_stream` returns a buffered binary file object. Underneath, `ResumableReader` holds one
"body" (an HTTP response, an S3 GET, a command's output, a local file) opened at the current byte
offset; when a read fails with a transient error it closes the body, waits (bounded backoff,
counted in the stats) and opens a new body at the offset it had reached, so no byte is delivered
twice and none is lost. A body that ends before the length it promised counts as a failure too:
a short read is never passed off as the end of a shard.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Callable, Protocol

from ..utils.secrets import redact
from . import urls
from .retry import Attempts, RetryPolicy, ShardUnavailable, StorageStats

BUFFER = 1 << 20  # the raw reads an S3/HTTP body sees; tarfile reads in much smaller pieces


class Body(Protocol):
    remaining: int | None  # bytes still promised (Content-Length), None when unknown

    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class TruncatedBody(ConnectionError):
    """The connection ended before the promised number of bytes."""


class ResumableReader(io.RawIOBase):
    """Bytes [start, end) of `url`, reopened at the current offset after each transient failure."""

    def __init__(self, url: str, open_body: Callable[[int, int | None], Body], start: int, end: int | None,
                 policy: RetryPolicy, stats: StorageStats | None):
        super().__init__()
        self.url, self.open_body, self.end = url, open_body, end
        self.position = start
        self.attempts = Attempts(url, policy, stats)
        self.body: Body | None = None
        self.gave_up: ShardUnavailable | None = None  # raised again on later reads, counted once
        self.on_close: list[Callable[[], None]] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = len(buffer) if self.end is None else min(len(buffer), self.end - self.position)
        if wanted <= 0:
            return 0
        if self.gave_up is not None:
            raise self.gave_up
        view = memoryview(buffer).cast("B")[:wanted]
        while True:
            try:
                return self._read_once(view)
            except Exception as error:  # noqa: BLE001 - Attempts re-raises what is not transient
                self._close_body()
                try:
                    self.attempts.failed(error)
                except ShardUnavailable as final:
                    self.gave_up = final
                    raise

    def _read_once(self, view: memoryview) -> int:
        if self.body is None:
            self.body = self.open_body(self.position, self.end)
        count = self.body.readinto(view)
        remaining = self.body.remaining
        if count == 0 and remaining:
            raise TruncatedBody(f"connection ended {remaining} bytes before the end of the body")
        if remaining is not None:
            self.body.remaining = remaining - count
        self.position += count
        return count

    def _close_body(self) -> None:
        body, self.body = self.body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass

    def close(self) -> None:
        if not self.closed:
            self._close_body()
            for callback in self.on_close:
                callback()
        super().close()


class LocalBody:
    """A local file from an offset; a short file is an error like a short HTTP body."""

    def __init__(self, path: str, start: int):
        self.file = open(path, "rb")
        self.file.seek(start)
        self.remaining = max(self.file.seek(0, io.SEEK_END) - start, 0)
        self.file.seek(start)

    def readinto(self, buffer: memoryview) -> int:
        return self.file.readinto(buffer)

    def close(self) -> None:
        self.file.close()


def body_opener(url: str, policy: RetryPolicy) -> Callable[[int, int | None], Body]:
    """A function (start, end) -> a body of `url` from `start`, for the URL's kind."""
    kind = urls.kind(url)
    if kind == "http":
        from .http import open_http

        return lambda start, end: open_http(url, start, end, policy.timeout)
    if kind == "s3":
        from .s3 import open_s3

        return lambda start, end: open_s3(url, start, end, policy.timeout)
    if kind == "pipe":
        from .pipe import open_pipe

        return lambda start, end: open_pipe(url[len(urls.PIPE):], start, policy.timeout)
    path = str(urls.local_path(url))
    return lambda start, end: LocalBody(path, start)


def open_uncached(url: str, start: int, end: int | None, policy: RetryPolicy,
                  stats: StorageStats | None) -> BinaryIO:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"{redact(url)}: bad byte range [{start}, {end})")
    reader = ResumableReader(url, body_opener(url, policy), start, end, policy, stats)
    return io.BufferedReader(reader, buffer_size=BUFFER)
