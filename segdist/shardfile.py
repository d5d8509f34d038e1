"""One shard's tar files: deterministic bytes, written under a temporary name, then published.

A WebDataset shard is a plain tar whose members `<key>.<ext>` are grouped by key. Headers are
fixed (mtime 0, uid/gid 0, no user or group names, mode 0444) and members are sorted by
extension, so a shard's bytes depend only on its samples. This module imports only the
standard library: it runs inside Ray workers, where importing webdataset (and with it torch)
would cost seconds per worker.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def publish(temp: Path, dest: Path) -> None:
    """Make a finished temporary file visible under its final name.

    A rename within one shared filesystem; the one place to change for a destination that is
    not a filesystem (an object store would upload `temp` to `dest` here, then delete it).
    """
    os.replace(temp, dest)


def member_bytes(size: int) -> int:
    """Bytes a member of `size` bytes takes in a tar: a 512-byte header plus its data in 512-byte blocks."""
    return 512 + -(-size // 512) * 512


@dataclass
class ShardPart:
    """A finished tar file: its name, sample count, size and where each sample's first header starts."""

    name: str
    samples: int
    bytes: int
    offsets: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes, "offsets": self.offsets}


class TarShard:
    """Writes one shard into `directory`: `<stem>.tar`, then `<stem>_1.tar`, ... when `max_bytes` is exceeded."""

    def __init__(self, directory: Path, stem: str, max_bytes: int | None = None):
        self.directory, self.stem, self.max_bytes = Path(directory), stem, max_bytes
        self.parts: list[ShardPart] = []
        self._tar: tarfile.TarFile | None = None
        self._stream = None
        self._temp: Path | None = None
        self._part: ShardPart | None = None
        self._estimate = 0

    def _part_name(self) -> str:
        n = len(self.parts)
        return f"{self.stem}.tar" if n == 0 else f"{self.stem}_{n}.tar"

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample (`files`: extension -> bytes), starting a new part if this one would get too big."""
        size = sum(member_bytes(len(data)) for data in files.values())
        if self._part is not None and self.max_bytes is not None and self._estimate + size > self.max_bytes:
            self._finish_part()
        if self._part is None:
            self._open_part()
        self._part.offsets.append(self._tar.offset)
        for ext in sorted(files):
            data = files[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._part.samples += 1
        self._estimate += size

    def close(self) -> list[ShardPart]:
        """Finish and publish the last part; returns every part written."""
        if self._part is not None:
            self._finish_part()
        return self.parts

    def abort(self) -> None:
        """Drop the unfinished part (parts already published stay; the caller owns them)."""
        if self._tar is not None:
            self._stream.close()
            self._temp.unlink(missing_ok=True)
            self._tar = self._stream = self._temp = self._part = None

    def _open_part(self) -> None:
        name = self._part_name()
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        self._stream, self._temp = os.fdopen(fd, "wb"), Path(temp)
        self._tar = tarfile.open(fileobj=self._stream, mode="w", format=tarfile.PAX_FORMAT)
        self._part, self._estimate = ShardPart(name, 0, 0), 0

    def _finish_part(self) -> None:
        self._tar.close()  # end-of-archive blocks; leaves the stream open
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.chmod(self._temp, 0o644)
        self._part.bytes = self._temp.stat().st_size
        publish(self._temp, self.directory / self._part.name)
        self.parts.append(self._part)
        self._tar = self._stream = self._temp = self._part = None

