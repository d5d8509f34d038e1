"""HTTP(S) objects over pooled keep-alive connections (urllib3, HTTP/1.1).

Why urllib3 and not fsspec's HTTPFileSystem or requests: resuming needs nothing more than a
`Range` header and a check of the `Content-Range` answer, and urllib3 gives a socket timeout on
connect and on every read with no event loop (HTTPFileSystem runs aiohttp on a background thread,
which does not survive fork into DataLoader workers, and hides its own retries from our counts).
Each process keeps one pool (made again after a fork) whose connections stay open between
requests: a body read to its end hands its connection back, one closed early drops it. Its
errors leave as OSErrors, which segdist.storage.retry classifies. One caveat handled here: a
server closing early can look like a short body, so the body tracks the bytes it was promised
(`remaining`).
"""

from __future__ import annotations

import os
import re
import threading

import urllib3

from ..utils.secrets import redact, split_userinfo
from .retry import HTTPStatusError, PermanentError

USER_AGENT = "segdist-storage"
_pools: dict[int, urllib3.PoolManager] = {}
_pools_lock = threading.Lock()


def pool() -> urllib3.PoolManager:
    """This process's connection pool (a child of fork makes its own: sockets are not shared)."""
    with _pools_lock:
        if os.getpid() not in _pools:
            _pools.clear()
            _pools[os.getpid()] = urllib3.PoolManager(num_pools=16, maxsize=8, retries=False, block=False)
        return _pools[os.getpid()]


class HTTPBody:
    """A response body that knows how many bytes it still owes."""

    def __init__(self, response, remaining: int | None):
        self.response, self.remaining = response, remaining
        self.done = False

    def readinto(self, buffer: memoryview) -> int:
        try:
            count = self.response.readinto(buffer)
        except urllib3.exceptions.HTTPError as error:
            raise ConnectionError(str(error)) from None
        self.done = count == 0
        return count

    def close(self) -> None:
        if self.done:
            self.response.release_conn()  # read to its end: the connection serves the next request
        else:
            self.response.close()  # bytes still on the wire: the connection cannot be reused


def get(url: str, headers: dict, timeout: float, method: str = "GET"):  # noqa: ANN201 - urllib3's response
    """One request on the pool, body not read yet; a failure to connect or send is an OSError."""
    url, authorization = split_userinfo(url)
    headers = {"User-Agent": USER_AGENT, **headers}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        # a body cut short reads as short (not an error that drops what arrived): `remaining` sees it, and
        # the retry resumes at the exact byte
        return pool().request(method, url, headers=headers, preload_content=False, redirect=True,
                              enforce_content_length=False, timeout=urllib3.Timeout(connect=timeout, read=timeout))
    except urllib3.exceptions.HTTPError as error:
        raise ConnectionError(redact(str(error))) from None


def open_http(url: str, start: int, end: int | None, timeout: float) -> HTTPBody:
    """GET `url` from byte `start` (to `end`, exclusive); a server ignoring Range is skipped forward."""
    headers = {}
    if start or end is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    response = get(url, headers, timeout)
    if response.status == 416:  # the range starts at or past the end: nothing to read
        response.drain_conn()
        return HTTPBody(_Empty(), 0)
    if response.status >= 400:
        response.drain_conn()
        raise HTTPStatusError(url, response.status, response.reason or "")
    length = response.headers.get("Content-Length")
    remaining = int(length) if length is not None else None
    if response.status == 206:
        first = _content_range_start(response.headers.get("Content-Range", ""))
        if first != start:
            response.close()
            raise PermanentError(f"asked for bytes from {start}, the server sent a range from {first}")
    elif start:
        _skip(response, start, url)  # 200: the whole object came back; drop what we already have
        remaining = remaining - start if remaining is not None else None
    return HTTPBody(response, remaining)


def head_status(url: str, timeout: float) -> int:
    """The status of a HEAD request (404 answered, not raised)."""
    response = get(url, {}, timeout, method="HEAD")
    response.drain_conn()
    if response.status < 400 or response.status in (404, 410):
        return response.status
    raise HTTPStatusError(url, response.status, response.reason or "")


def _content_range_start(header: str) -> int | None:
    match = re.match(r"bytes (\d+)-", header.strip())
    return int(match.group(1)) if match else None


def _skip(response, count: int, url: str) -> None:
    while count:
        try:
            chunk = response.read(min(count, 1 << 20))
        except urllib3.exceptions.HTTPError as error:
            raise ConnectionError(str(error)) from None
        if not chunk:
            raise ConnectionError(f"{redact(url)}: body ended while skipping to the resume offset")
        count -= len(chunk)


class _Empty:
    def readinto(self, buffer: memoryview) -> int:
        return 0

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass
