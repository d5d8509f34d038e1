"""The members of a tar shard's byte range, parsed from its headers: (name, bytes), as tar_writer wrote them.

A training batch reads a few samples by their byte offsets; parsing their 512-byte headers
directly (ustar, with pax records for long names) costs a fraction of opening a tarfile stream per
range. Checksums are verified; a range that ends inside a member raises
TruncatedMembers after the members before it.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

BLOCK = tarfile.BLOCKSIZE
_PAX = (tarfile.XHDTYPE, tarfile.XGLTYPE)
_FILES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class TruncatedMembers(tarfile.TarError):
    """The bytes end inside a member (or its header)."""


def members(data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
    """(name, content) of every file member in `data`, stopping at the end-of-archive blocks."""
    view, position, pax_name = memoryview(data), 0, None
    while position + BLOCK <= len(view):
        header = bytes(view[position:position + BLOCK])
        if header.count(0) == BLOCK:  # end of archive
            return
        name, size, kind = _header(header)
        start = position + BLOCK
        position = start + -(-size // BLOCK) * BLOCK
        if start + size > len(view):
            raise TruncatedMembers(f"member {name} needs {size} bytes, {len(view) - start} are left")
        body = bytes(view[start:start + size])
        if kind in _PAX:
            pax_name = _pax_path(body) or pax_name
            continue
        if kind in _FILES:
            yield pax_name or name, body
        pax_name = None
    if position < len(view):
        raise TruncatedMembers(f"{len(view) - position} bytes after the last member are not a header")


def _header(header: bytes) -> tuple[str, int, bytes]:
    """(name, size, type) of a ustar header whose checksum holds; anything else is tarfile's to judge."""
    try:
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        checksum = int(header[148:156].rstrip(b"\0 "), 8)
    except ValueError:  # base-256 sizes, odd fields: the slow, complete parser
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        return info.name, info.size, info.type
    if checksum != sum(header) - sum(header[148:156]) + 8 * 32:  # the checksum field counts as spaces
        raise tarfile.HeaderError(f"bad checksum in the header of {header[:100].split(bytes(1))[0]!r}")
    name = header[:100].split(bytes(1), 1)[0].decode("utf-8", "surrogateescape")
    prefix = header[345:500].split(bytes(1), 1)[0] if header[257:262] == b"ustar" else b""
    if prefix:
        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    return name, size, header[156:157]


def _pax_path(records: bytes) -> str | None:
    """The `path` of a pax extended header ("<length> path=<name>\\n" records)."""
    position = 0
    while position < len(records):
        try:
            length = int(records[position:records.index(b" ", position)])
        except ValueError:  # a record without its length: a broken member, counted as a truncated shard
            raise tarfile.HeaderError(f"unreadable pax record {bytes(records[position:position + 40])!r}") from None
        if length <= 0:
            raise tarfile.HeaderError(f"pax record of length {length}")
        key, _, value = records[position:position + length].partition(b" ")[2].partition(b"=")
        if key == b"path":
            return value[:-1].decode("utf-8", "surrogateescape")
        position += length
    return None


def samples(data: bytes | memoryview) -> Iterator[dict]:
    """WebDataset samples of `data`: members grouped by key (`<key>.<ext>` -> {"__key__": key, ext: bytes})."""
    current: dict | None = None
    for name, body in members(data):
        folder, slash, base = name.rpartition("/")
        stem, _, ext = base.partition(".")
        key = folder + slash + stem  # as webdataset's group_by_keys: the path up to the name's first dot
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        current[ext] = body
    if current is not None:
        yield current
