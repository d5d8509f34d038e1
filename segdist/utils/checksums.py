"""Shard checksums: a writer that hashes and counts what passes through it, and a file's digest.

A shard's digest is computed while it is written (prepare) or downloaded (the node cache), never
by reading the file a second time.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Callable, NamedTuple

CHUNK = 1 << 20


class Digest(NamedTuple):
    """What a shard should be: its size in bytes and its sha256 (hex; None when not recorded)."""

    size: int
    sha256: str | None = None

    def mismatch(self, actual: Digest) -> str | None:
        """Why `actual` is not this digest (None when it is): the sizes, then the hashes where both are known."""
        if actual.size != self.size:
            return f"size {actual.size} bytes, dataset.json records {self.size}"
        if None not in (self.sha256, actual.sha256) and actual.sha256 != self.sha256:
            return f"sha256 {actual.sha256}, dataset.json records {self.sha256}"
        return None


class HashingWriter:
    """Wraps a binary file: every write also updates a sha256 and a byte count."""

    def __init__(self, file: BinaryIO):
        self.file, self.size, self.hash = file, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def digest(self) -> Digest:
        return Digest(self.size, self.hash.hexdigest())

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


def stream_digest(stream: BinaryIO, progress: Callable[[int], object] | None = None) -> Digest:
    """Size and sha256 of what `stream` holds from its position on; `progress(n)` after each chunk."""
    hash_, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        hash_.update(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return Digest(size, hash_.hexdigest())
