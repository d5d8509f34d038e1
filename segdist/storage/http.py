"""HTTP(S) objects through the standard library (`urllib`).

Why urllib and not fsspec's HTTPFileSystem or requests: resuming needs nothing more than a
`Range` header and a check of the `Content-Range` answer, and urllib gives a socket timeout on
connect and on every read with no event loop (HTTPFileSystem runs aiohttp on a background thread,
which does not survive fork into DataLoader workers, and hides its own retries from our counts)
and no extra dependency. One caveat handled here: `HTTPResponse.readinto` returns 0 when the server
closes early instead of raising, so the body tracks the bytes it was promised (`remaining`).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from ..utils.secrets import redact, split_userinfo
from .retry import HTTPStatusError, PermanentError

USER_AGENT = "segdist-storage"


class HTTPBody:
    """A response body that knows how many bytes it still owes."""

    def __init__(self, response, remaining: int | None):
        self.response, self.remaining = response, remaining

    def readinto(self, buffer: memoryview) -> int:
        return self.response.readinto(buffer)

    def close(self) -> None:
        self.response.close()


def open_http(url: str, start: int, end: int | None, timeout: float) -> HTTPBody:
    """GET `url` from byte `start` (to `end`, exclusive); a server ignoring Range is skipped forward."""
    headers = {"User-Agent": USER_AGENT}
    if start or end is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    try:
        response = urllib.request.urlopen(request(url, headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416:  # the range starts at or past the end: nothing to read
            return HTTPBody(_Empty(), 0)
        raise HTTPStatusError(url, error.code, str(error.reason)) from None
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
    try:
        with urllib.request.urlopen(request(url, {"User-Agent": USER_AGENT}, "HEAD"), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        if error.code in (404, 410):
            return error.code
        raise HTTPStatusError(url, error.code, str(error.reason)) from None


def request(url: str, headers: dict, method: str | None = None) -> urllib.request.Request:
    """A Request for `url`; `user:password@` in it is sent as HTTP Basic auth (urllib would take it for the host)."""
    url, authorization = split_userinfo(url)
    if authorization is not None:
        headers = {**headers, "Authorization": authorization}
    return urllib.request.Request(url, headers=headers, method=method)


def _content_range_start(header: str) -> int | None:
    match = re.match(r"bytes (\d+)-", header.strip())
    return int(match.group(1)) if match else None


def _skip(response, count: int, url: str) -> None:
    while count:
        chunk = response.read(min(count, 1 << 20))
        if not chunk:
            raise ConnectionError(f"{redact(url)}: body ended while skipping to the resume offset")
        count -= len(chunk)


class _Empty:
    def readinto(self, buffer: memoryview) -> int:
        return 0

    def close(self) -> None:
        pass
