"""Files that are complete or absent: written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary path beside `path`, renamed over `path` when the block succeeds, removed when it fails.

    `suffix` ends the temporary name (writers that infer the format from it want e.g. ".png").
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o644)
        publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
