"""Secrets in shard URLs and `pipe:` commands, masked as `***` wherever text leaves the process.

A `data.shards` value may carry a credential: `https://user:password@host/data`, a pre-signed
URL's `?X-Amz-Signature=...&X-Amz-Credential=...`, a `?token=`/`?sig=` query, or a `pipe:` command
starting with environment assignments (`pipe:TOKEN=abc curl -H "Authorization: Bearer $TOKEN" ...`).
The real value is used only in memory; `redact` is applied where such text is written or shown:
config.yaml, the trackers' parameters, printed lines, error messages, summary.json, metrics.json.

    >>> redact("https://me:hunter2@host/data?X-Amz-Signature=abc&part=1")
    'https://***@host/data?X-Amz-Signature=***&part=1'
    >>> redact("pipe:TOKEN=abc curl -fsS http://host/{name}")
    'pipe:TOKEN=*** curl -fsS http://host/{name}'

A value already redacted cannot be used to read anything: `is_redacted` tells callers to ask for
the real one again (a resumed run, `segdist evaluate --shards`).
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# query parameters and `NAME=` assignments whose value is a credential (matched case-insensitively,
# '-' read as '_'): a listed name, or a name containing one of the SECRET_PARTS
SECRET_NAMES = {"x_amz_signature", "x_amz_credential", "x_amz_security_token", "signature", "token",
                "access_token", "sig", "key", "password", "secret", "auth", "pass", "passwd", "pwd",
                "credential", "credentials", "apikey", "api_key", "session", "sas"}
SECRET_PARTS = ("token", "secret", "passw", "signature", "credential", "apikey", "api_key", "auth",
                "private", "_key", "key_", "_pass", "pass_")

_VALUE = r"""(?:'[^']*'|"(?:\\.|[^"\\])*"|[^\s'"`;&|])*"""  # a shell word: quoted parts or plain characters
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s'\"]*)@")
_QUERY = re.compile(r"""([?&;])([A-Za-z0-9_.-]+)=([^&#\s'"`]*)""")
_ASSIGNMENT = re.compile(r"(?<![\w/.:-])([A-Za-z_][A-Za-z0-9_]*)=(" + _VALUE + ")")
_LEADING_ASSIGNMENTS = re.compile(r"^(\s*(?:export\s+|env\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=" + _VALUE + r"\s+)+)")
_HEADER = re.compile(r"(?i)\b(authorization|proxy-authorization|cookie|x-api-key|api-key|x-auth-token|"
                     r"x-amz-security-token|private-token)(\s*:\s*)([^'\"\n]*)")
_PIPE = re.compile(r"pipe:([^\n]*)")
_QUOTED_COMMAND = re.compile(r"`([^`\n]*)`")
_CURL_USER = re.compile(r"(?<!\S)(-u\s*|--user[\s=]+|--proxy-user[\s=]+)(" + _VALUE + ")")


def secret_name(name: str) -> bool:
    """Whether a query parameter or variable called `name` holds a credential."""
    low = name.lower().replace("-", "_")
    return low in SECRET_NAMES or any(part in low for part in SECRET_PARTS)


def redact(text, source=None) -> str:  # noqa: ANN001 - any values; their str() is used
    """`text` with every credential it carries replaced by `***` (idempotent; other text unchanged).

    With `source` (the URL or command an error message is about), the credentials found in
    `source` are also masked where they appear bare in `text`, e.g. echoed by a failing command.
    """
    text = str(text)
    if source is not None:
        found: list[str] = []
        _redact(str(source), found)
        for value in sorted({v for v in found if len(v) >= 4}, key=len, reverse=True):
            text = text.replace(value, MASK)
    return _redact(text, [])


def _redact(text: str, found: list[str]) -> str:
    """`redact`, adding each masked value to `found`."""
    mask = _masker(found)
    text = _PIPE.sub(lambda m: "pipe:" + _redact_command(m.group(1), mask), text)  # a pipe: source, to the line's end
    text = _QUOTED_COMMAND.sub(lambda m: "`" + _redact_command(m.group(1), mask) + "`", text)  # as pipe errors quote
    text = _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={mask(m.group(2))}" if secret_name(m.group(1)) else m.group(0),
                           text)
    text = _USERINFO.sub(lambda m: m.group(1) + (mask(m.group(2)) + "@" if m.group(2) else "@"), text)
    text = _QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}={mask(m.group(3))}" if secret_name(m.group(2))
                      and m.group(3) else m.group(0), text)
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + mask(m.group(3)), text)
    return text


def _masker(found: list[str]):  # noqa: ANN202
    def mask(value: str) -> str:
        value = value.strip("'\"")
        if value != MASK:
            found.append(value)
            found.extend(part for part in re.split(r"[\s:]", value) if part not in ("", "Basic", "Bearer"))
            found.append(unquote(value))
        return MASK
    return mask


def _redact_command(command: str, mask) -> str:  # noqa: ANN001
    """A shell command with its leading `NAME=value` assignments, secret-looking ones anywhere,
    curl's `-u user:password` and credential headers masked."""
    leading = _LEADING_ASSIGNMENTS.match(command)
    head, rest = (leading.group(1), command[leading.end():]) if leading else ("", command)
    head = _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={mask(m.group(2))}", head)
    rest = _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={mask(m.group(2))}" if secret_name(m.group(1)) else m.group(0),
                           rest)
    rest = _CURL_USER.sub(lambda m: m.group(1) + mask(m.group(2)), rest)
    return head + rest


def is_redacted(text) -> bool:  # noqa: ANN001
    """Whether `text` holds a masked credential (it came from a redacted config.yaml)."""
    return MASK in str(text)


def split_userinfo(url: str) -> tuple[str, str | None]:
    """(`url` without `user:password@`, the value of an HTTP Basic `Authorization` header or None)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    credentials = f"{unquote(user)}:{unquote(password)}".encode()
    return urlunsplit(parts._replace(netloc=host)), "Basic " + base64.b64encode(credentials).decode()
