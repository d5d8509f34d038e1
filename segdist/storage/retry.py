"""Bounded retries with exponential backoff, the give-up error, and the counts a run reports."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NoReturn, TypeVar

from ..utils.secrets import redact

T = TypeVar("T")

# status codes worth another try: server errors, request timeout, too many requests
TRANSIENT_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


class PermanentError(OSError):
    """A failure that no retry fixes (a command that does not exist, a server sending the wrong range)."""


PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError,
                    PermanentError)


class ShardUnavailable(OSError):
    """An object (a shard, a manifest) could not be read or written, after `attempts` tries.

    Loaders catch this to count the shard as skipped and go on; everything else lets it stop the
    command with its message, which names the URL and the reason.
    """

    def __init__(self, url: str, reason: str, attempts: int):
        plural = "s" * (attempts != 1)
        super().__init__(f"{redact(url)}: {redact(reason, url)} (gave up after {attempts} attempt{plural})")
        self.url, self.reason, self.attempts = url, reason, attempts

    def __reduce__(self):  # picklable, so it can cross a DataLoader worker boundary
        return type(self), (self.url, self.reason, self.attempts)


class ObjectMissing(ShardUnavailable):
    """The object does not exist (no such file or key, HTTP 404 or 410): a ShardUnavailable callers may tell apart."""


def is_missing(error: BaseException) -> bool:
    """Whether `error` says the object is not there (rather than unreadable)."""
    if isinstance(error, FileNotFoundError):
        return True
    if isinstance(error, HTTPStatusError):
        return error.status in (404, 410)
    return boto_status(error) == 404


class ChecksumMismatch(OSError):
    """A download that is not the shard dataset.json describes (size or sha256).

    Transient: fetched again within the retry budget, since a proxy or an object being replaced
    may have served a bad copy; a shard that stays wrong is given up like an unreachable one.
    """


class HTTPStatusError(OSError):
    """A server answered an error status (from our HTTP client, or a 503 we injected)."""

    def __init__(self, url: str, status: int, message: str = ""):
        super().__init__(f"HTTP {status}{': ' + message if message else ''}")
        self.url, self.status = url, status


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `retries` failures tolerated per object, then give up.

    The n-th retry waits `backoff * 2**(n-1)` seconds (capped at `max_backoff`, with jitter so
    many workers do not retry in lockstep); the waits of one object add up to at most
    `max_wait`. `timeout` bounds every network call (connect, and each read).
    """

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_wait: float = 60.0
    timeout: float = 30.0

    def delay(self, failure: int) -> float:
        return min(self.backoff * 2 ** (failure - 1), self.max_backoff) * random.uniform(0.5, 1.0)


@dataclass
class StorageStats:
    """Retries and give-ups of one process; loaders sum them (`merge`) into the log and summary."""

    retries: int = 0
    give_ups: int = 0
    retried: Counter = field(default_factory=Counter)  # url -> retries
    unavailable: dict = field(default_factory=dict)  # url -> reason given up with

    def record_retry(self, url: str) -> None:
        self.retries += 1
        self.retried[redact(url)] += 1  # reported (log, summary.json): no credential

    def record_give_up(self, url: str, reason: str) -> None:
        self.give_ups += 1
        self.unavailable[redact(url)] = redact(reason, url)

    def merge(self, other: StorageStats | dict) -> StorageStats:
        """Add another process's counts (a StorageStats or its `as_dict()`)."""
        other = other if isinstance(other, StorageStats) else StorageStats.from_dict(other)
        self.retries += other.retries
        self.give_ups += other.give_ups
        self.retried.update(other.retried)
        self.unavailable.update(other.unavailable)
        return self

    def as_dict(self) -> dict:
        return {"retries": self.retries, "give_ups": self.give_ups, "retried": dict(self.retried),
                "unavailable": dict(self.unavailable)}

    @classmethod
    def from_dict(cls, data: dict) -> StorageStats:
        return cls(data["retries"], data["give_ups"], Counter(data["retried"]), dict(data["unavailable"]))


_process_stats = StorageStats()


def process_stats() -> StorageStats:
    """The counts of this process, used when a caller passes no `stats` (reset in a forked child)."""
    return _process_stats


def _reset_after_fork() -> None:
    global _process_stats
    _process_stats = StorageStats()  # a worker reports its own counts, not its parent's again


os.register_at_fork(after_in_child=_reset_after_fork)


def is_transient(error: BaseException) -> bool:
    """Worth another try: dropped connections, timeouts, 5xx/408/429; not 'not found' or 'denied'."""
    if isinstance(error, HTTPStatusError):
        return error.status in TRANSIENT_STATUS
    status = boto_status(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    if isinstance(error, PERMANENT_ERRORS) or isinstance(error, ShardUnavailable):
        return False
    return isinstance(error, (OSError, EOFError, TimeoutError)) or _is_client_library_error(error)


def boto_status(error: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError, also when s3fs wrapped it in an OSError."""
    seen = error
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and "ResponseMetadata" in response:
            return response["ResponseMetadata"].get("HTTPStatusCode")
        seen = seen.__cause__
    return None


def _is_client_library_error(error: BaseException) -> bool:
    """botocore/aiohttp transport errors do not all derive from OSError."""
    module = type(error).__module__ or ""
    return module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3", "http.client", "asyncio"))


def describe(error: BaseException) -> str:
    """A one-line reason for reports: the error's type and message, and the HTTP status if any."""
    text = redact(str(error)) or type(error).__name__
    text = f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text
    status = boto_status(error)
    return f"HTTP {status}, {text}" if status is not None else text


class Attempts:
    """The failure budget of one object: call `failed(error)` after each failure; it sleeps or raises."""

    def __init__(self, url: str, policy: RetryPolicy, stats: StorageStats | None):
        self.url, self.policy = url, policy
        self.stats = stats if stats is not None else process_stats()
        self.failures, self.waited = 0, 0.0

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        reason = redact(describe(error), self.url)  # also what a failing command echoed of its credentials
        if not is_transient(error):
            self.give_up(reason, missing=is_missing(error))
        delay = self.policy.delay(self.failures)
        if self.failures > self.policy.retries:
            self.give_up(reason)
        if self.waited + delay > self.policy.max_wait:
            self.give_up(f"{reason}; retry waits would pass max_wait={self.policy.max_wait:g} s")
        self.stats.record_retry(self.url)
        time.sleep(delay)
        self.waited += delay

    def give_up(self, reason: str, missing: bool = False) -> NoReturn:
        give_up(self.url, reason, self.stats, self.failures, missing)


def give_up(url: str, reason: str, stats: StorageStats | None, attempts: int = 1, missing: bool = False) -> NoReturn:
    """Count `url` as unavailable for `reason` and raise the ShardUnavailable that loaders skip it on
    (ObjectMissing where the object is not there)."""
    (stats if stats is not None else process_stats()).record_give_up(url, reason)
    raise (ObjectMissing if missing else ShardUnavailable)(url, reason, attempts)


def with_retries(url: str, operation: Callable[[], T], policy: RetryPolicy, stats: StorageStats | None) -> T:
    """`operation()` retried under `policy`; a ShardUnavailable when it keeps failing."""
    attempts = Attempts(url, policy, stats)
    while True:
        try:
            return operation()
        except Exception as error:  # noqa: BLE001 - classified by is_transient, re-raised as ShardUnavailable
            attempts.failed(error)
