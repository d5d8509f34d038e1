"""Where a shard lives: a local path, `http(s)://`, `s3://bucket/key` or a `pipe:COMMAND`."""

from __future__ import annotations

import os
import posixpath
import shlex
from pathlib import Path

from segdist.utils.files import check_plain_name
from segdist.utils.secrets import redact

Url = str | os.PathLike
REMOTE_SCHEMES = ("http://", "https://", "s3://")
PIPE = "pipe:"
NAME_FIELD = "{name}"


def kind(url: Url) -> str:
    """'local', 'http', 's3' or 'pipe'."""
    text = str(url)
    if text.startswith(PIPE):
        return "pipe"
    if text.startswith(("http://", "https://")):
        return "http"
    if text.startswith("s3://"):
        return "s3"
    return "local"


def is_local(url: Url) -> bool:
    return kind(url) == "local"


def local_path(url: Url) -> Path:
    """The filesystem path of a local URL (`file://` accepted)."""
    text = str(url)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(base: Url, name: str) -> str:
    """`name` inside `base`: a directory, a URL prefix, or a `pipe:` command holding `{name}`.

    A pipe command cannot be joined by appending, so it names the place of the shard name:
    `join("pipe:curl -fsS http://host/data/{name}", "train-000000.tar")`.

    `name` comes from data (a manifest's shard list), so it must be a plain file name
    (utils.files.PLAIN_NAME: no `/`, `..`, absolute path, NUL or shell syntax), which keeps the
    result inside `base`; a DataError otherwise. In a pipe command it is shell-quoted as well.
    """
    text = str(base)
    check_plain_name(name, "the name of an object in a dataset directory or URL prefix")
    kind_ = kind(text)
    if kind_ == "pipe":
        if NAME_FIELD not in text:
            raise ValueError(f"{redact(text)!r}: a pipe: source needs a {NAME_FIELD} placeholder for the shard name, "
                             f"e.g. 'pipe:curl -fsS http://host/data/{NAME_FIELD}'")
        return text.replace(NAME_FIELD, shlex.quote(name))
    if kind_ == "local":
        return str(local_path(text) / name)
    if kind_ == "http" and "?" in text:  # a query (`?token=...`) goes with every object under the prefix
        prefix, _, query = text.partition("?")
        return join(prefix, name) + "?" + query
    return posixpath.join(text if text.endswith("/") else text + "/", name)


def basename(url: Url) -> str:
    """The last path component of any URL kind (for a pipe, of its last word)."""
    text = str(url)
    if kind(text) == "pipe":
        text = text.split()[-1] if text.split() else text
    return posixpath.basename(text.split("?", 1)[0].rstrip("/")) or "object"

