"""The tar writer: one shard's tar files, deterministic bytes, written under a temporary name, then published.

Each part's size and sha256 are computed from the bytes as they are written (dataset.json records
them; the cache and readers check them), so the file is never read back to hash it.

A WebDataset shard is a plain tar whose members `<key>.<ext>` are grouped by key. Headers are
fixed (mtime 0, uid/gid 0, no user or group names, mode 0444) and members are sorted by
extension, so a shard's bytes depend only on its samples. The bytes are exactly those of
Python's `tarfile` in PAX format with those headers (a test checks it); headers are built here
directly because `tarfile.addfile` costs about 0.1 ms per member. The reader is
segdist.data.tar_reader (through webdataset). This module imports no third-party package: it runs
inside Ray workers, where importing webdataset (and with it torch) would cost seconds per worker.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from segdist.utils.checksums import HashingWriter
from segdist.utils.files import publish, umask_mode

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this
_MODE = 0o444


def member_bytes(size: int) -> int:
    """Bytes a member of `size` bytes takes in a tar: a 512-byte header plus its data in 512-byte blocks."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def _template() -> bytearray:
    """A ustar header with everything but name, size and checksum filled in, as tarfile writes it."""
    info = tarfile.TarInfo("x")
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = _MODE, 0, 0, 0, "", ""
    header = bytearray(info.tobuf(tarfile.PAX_FORMAT))
    header[0:100] = bytes(100)
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    return header


_TEMPLATE = _template()


def tar_header(name: str, size: int) -> bytes:
    """The header block(s) of one member (a pax extended header first when the name needs one)."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or not name.isascii() or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = size, _MODE, 0, 0, 0, "", ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = _TEMPLATE.copy()
    header[0 : len(encoded)] = encoded
    header[124:136] = b"%011o\0" % size
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


@dataclass
class ShardPart:
    """A finished tar file: its name, sample count, size, sha256, where each sample's first header starts
    and the classes each sample holds (the training order's repeat factors read them)."""

    name: str
    samples: int
    bytes: int
    offsets: list[int] = field(default_factory=list)
    classes: list[list[int]] = field(default_factory=list)
    sha256: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256,
                "offsets": self.offsets, "classes": self.classes}


class TarShard:
    """Writes one shard into `directory`: `<stem>.tar`, then `<stem>_1.tar`, ... when `max_bytes` is exceeded."""

    def __init__(self, directory: Path, stem: str, max_bytes: int | None = None):
        self.directory, self.stem, self.max_bytes = Path(directory), stem, max_bytes
        self.parts: list[ShardPart] = []
        self._stream = None
        self._temp: Path | None = None
        self._part: ShardPart | None = None
        self._offset = self._estimate = 0

    def _part_name(self) -> str:
        n = len(self.parts)
        return f"{self.stem}.tar" if n == 0 else f"{self.stem}_{n}.tar"

    def write(self, key: str, files: dict[str, bytes], classes: list[int] = ()) -> None:
        """Add one sample (`files`: extension -> bytes; the class ids it holds), starting a new part if this one
        would get too big."""
        size = sum(member_bytes(len(data)) for data in files.values())
        if self._part is not None and self.max_bytes is not None and self._estimate + size > self.max_bytes:
            self._finish_part()
        if self._part is None:
            self._open_part()
        self._part.offsets.append(self._offset)
        self._part.classes.append(list(classes))
        for ext in sorted(files):
            data = files[ext]
            self._write(tar_header(f"{key}.{ext}", len(data)))
            self._write(data)
            self._write(bytes(-len(data) % BLOCK))
        self._part.samples += 1
        self._estimate += size

    def close(self) -> list[ShardPart]:
        """Finish and publish the last part; returns every part written."""
        if self._part is not None:
            self._finish_part()
        return self.parts

    def abort(self) -> None:
        """Drop the unfinished part (parts already published stay; the caller owns them)."""
        if self._stream is not None:
            self._stream.close()
            self._temp.unlink(missing_ok=True)
            self._stream = self._temp = self._part = None

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._offset += len(data)

    def _open_part(self) -> None:
        name = self._part_name()
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        # hashed as written: the recorded sha256 costs no second read of the file
        self._stream, self._temp = HashingWriter(os.fdopen(fd, "wb")), Path(temp)
        self._part, self._offset, self._estimate = ShardPart(name, 0, 0), 0, 0

    def _finish_part(self) -> None:
        self._write(bytes(2 * BLOCK))  # end of archive, then padding to a whole record, as tarfile does
        self._write(bytes(-self._offset % RECORD))
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.chmod(self._temp, umask_mode())  # mkstemp made it 0600
        self._part.bytes, self._part.sha256 = self._offset, self._stream.digest().sha256
        publish(self._temp, self.directory / self._part.name)
        self.parts.append(self._part)
        self._stream = self._temp = self._part = None
