"""Files that are complete or absent (written under a temporary name beside the target, then renamed),
and names from data that stay inside the directory they are joined to."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segdist.errors import DataError

# a storage name (a shard in dataset.json): what prepare writes (train-000000.tar, val-000003_1.tar,
# dataset.json), nothing that is a path, a URL part or shell syntax, nor `.`, `..` or an option
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
PLAIN_NAME_RULE = "letters, digits, '_', '-' and '.', not starting with '.' or '-', at most 255 characters"
# what a file name made from a data key may not hold: path separators, NUL, control characters and
# lone surrogates (not encodable)
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f\ud800-\udfff]+")
_MAX_NAME_BYTES = 200  # of the stem, under NAME_MAX (255) with a hash and a suffix


def is_plain_name(name: object) -> bool:
    """Whether `name` is a plain file name (PLAIN_NAME): no path, no `..`, no shell metacharacters."""
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None


def check_plain_name(name: object, where: str) -> str:
    """`name` when it is a plain file name, else a DataError naming `where` (the manifest or option it came from)."""
    if not is_plain_name(name):
        raise DataError(f"{where}: {name!r} is not a plain file name ({PLAIN_NAME_RULE}); refusing to use it")
    return name


def safe_file_name(key: str, suffix: str = "") -> str:
    """A file name for `key` (a sample key, a tar member's or an input's name: data) that stays in its directory.

    A key that is already safe is kept as it is; otherwise path separators, NUL and control
    characters become '_', a leading '.' is escaped and the name is shortened, and an 8-digit hash
    of the key is appended so that different keys keep different names: `../x` -> `_.._x-1a2b3c4d`.
    """
    key = str(key)
    name = _UNSAFE_CHARS.sub("_", key)
    if name.startswith(".") or not name:
        name = "_" + name
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        name = name.encode("utf-8")[:_MAX_NAME_BYTES].decode("utf-8", "ignore")
    if name != key:
        name = f"{name}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return name + suffix


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", mode: int | None = None) -> Iterator[Path]:
    """A unique temporary path beside `path`, renamed over `path` when the block succeeds, removed when it fails.

    `suffix` ends the temporary name (writers that infer the format from it want e.g. ".png").
    The file gets `mode`, else what the user's umask allows a new file (0600 until it is published).
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, umask_mode() if mode is None else mode)
        publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def umask_mode() -> int:
    """The permissions the user's umask gives a new file (mkstemp's files are 0600 whatever it is)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def publish(temp: Path, dest: Path) -> None:
    """Make a finished temporary file visible under its final name.

    A rename within one shared filesystem; the one place to change for a destination that is
    not a filesystem (an object store would upload `temp` to `dest` here, then delete it).
    """
    os.replace(temp, dest)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path` (`mode`: see atomic_path)."""
    with atomic_path(path, mode=mode) as temporary:
        temporary.write_text(text)
