"""Real servers on 127.0.0.1 for the tests and benchmarks: a fault-injecting HTTP server and moto's S3.

`FaultyServer` is the standard library's threading HTTP server. It either serves a directory
(GET and HEAD with `Range: bytes=...`) or forwards every request to an upstream server (moto's
S3), and in both modes it can add latency to each request, answer an error status for the first
K requests of a path, or drop the connection after N bytes of the body for the first K GETs of a
path, and it can require HTTP Basic auth (`auth=(user, password)`, else 401). It logs every
request (method, path, range, status, body bytes sent) so tests can assert
what a client really did. Bodies are held in memory: it is a test server, for files of a few MiB.

`MotoServer` runs `python -m moto.server` as a subprocess (as s3fs's own test suite does).
"""

from __future__ import annotations

import base64
import os
import http.client
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ERROR_BODY = b"<?xml version='1.0'?><Error><Code>%s</Code><Message>injected by the test server</Message></Error>"
DROP_PAUSE = 0.1
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None  # the Range header as sent, e.g. "bytes=300-"
    status: int
    body_bytes: int  # body bytes actually written (fewer than promised when dropped)

    @property
    def range_start(self) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-\d*", self.range or "")
        return int(match.group(1)) if match else None


@dataclass
class _Fault:
    times: int  # how many more matching requests it applies to
    status: int | None = None  # answer this status instead of the real response
    drop_after: int | None = None  # close the connection after this many body bytes


class FaultyServer:
    """A threaded HTTP server on 127.0.0.1 serving `root` or proxying to `upstream`, with faults."""

    def __init__(self, root: Path | None = None, *, upstream: str | None = None, latency: float = 0.0,
                 auth: tuple[str, str] | None = None):
        if (root is None) == (upstream is None):
            raise ValueError("give exactly one of root (serve a directory) or upstream (proxy)")
        self.root = Path(root) if root is not None else None
        self.upstream = urlsplit(upstream) if upstream else None
        self.latency = latency
        self.auth = auth  # (user, password) every request must send as HTTP Basic auth; settable
        self.log: list[Request] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._lock = threading.Condition()
        self._in_flight = 0  # requests being answered: the log waits for them (see `requests`)
        self.connections = 0  # TCP connections accepted (keep-alive: fewer than requests)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- fault injection -------------------------------------------------------------------------
    def fail(self, path: str, times: int, status: int = 503) -> None:
        """Answer `status` to the next `times` requests (any method) of `path`."""
        self._add_fault(path, _Fault(times, status=status))

    def drop_connection(self, path: str, times: int, after_bytes: int) -> None:
        """Close the connection after `after_bytes` body bytes for the next `times` GETs of `path`."""
        self._add_fault(path, _Fault(times, drop_after=after_bytes))

    def _add_fault(self, path: str, fault: _Fault) -> None:
        with self._lock:
            self._faults.setdefault(path, []).append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults.get(path, []):
                applies = fault.status is not None or method == "GET"
                if fault.times > 0 and applies:
                    fault.times -= 1
                    return fault
        return None

    # -- what happened ---------------------------------------------------------------------------
    def requests(self, path: str, method: str | None = None) -> list[Request]:
        """The log of `path`, once every request under way is answered (a client can have read a
        whole body before the server thread gets to log it)."""
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=10)
            return [r for r in self.log if r.path == path and (method is None or r.method == method)]

    def bytes_served(self, path: str) -> int:
        return sum(r.body_bytes for r in self.requests(path))

    def reset(self) -> None:
        """Forget the log and every pending fault."""
        with self._lock:
            self.log.clear()
            self._faults.clear()

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)
            self._in_flight -= 1
            self._lock.notify_all()


def _handler_class(server: FaultyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp (s3fs) expects; every reply has a length
    owner: FaultyServer

    def log_message(self, *args) -> None:  # the request log is `owner.log`, not stderr
        pass

    def setup(self) -> None:  # one handler per connection
        super().setup()
        with self.owner._lock:
            self.owner.connections += 1

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.owner._begin()
        if self.owner.latency:
            time.sleep(self.owner.latency)
        if self.owner.auth is not None and self.headers.get("Authorization") != _basic(*self.owner.auth):
            self._drain_request_body()
            return self._reply(path, 401, {"WWW-Authenticate": 'Basic realm="test"'}, b"unauthorized")
        fault = self.owner._take_fault(self.command, path)
        if fault is not None and fault.status is not None:
            self._drain_request_body()
            code = b"ServiceUnavailable" if fault.status == 503 else b"InternalError"
            return self._reply(path, fault.status, {"Content-Type": "application/xml"}, ERROR_BODY % code)
        try:
            if self.owner.upstream is not None:
                status, headers, body = self._forward()
            else:
                status, headers, body = self._from_directory(path)
        except OSError as error:
            status, headers, body = 502, {}, f"test server: {error}".encode()
        drop_after = fault.drop_after if fault is not None else None
        self._reply(path, status, headers, body, drop_after=drop_after)

    def _drain_request_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _from_directory(self, path: str) -> tuple[int, dict, bytes]:
        file = (self.owner.root / path.lstrip("/")).resolve()
        if self.command not in ("GET", "HEAD"):
            return 405, {}, b"read-only server"
        if not file.is_relative_to(self.owner.root.resolve()) or not file.is_file():
            return 404, {}, b"not found"
        data = file.read_bytes()
        size = len(data)
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        byte_range = _parse_range(self.headers.get("Range"), size)
        if byte_range is None:
            return 200, headers, data
        start, end = byte_range
        if start >= size or start >= end:
            return 416, {"Content-Range": f"bytes */{size}"}, b""
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return 206, headers, data[start:end]

    def _forward(self) -> tuple[int, dict, bytes]:
        body = self._drain_request_body()
        upstream = self.owner.upstream
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(self.command, self.path, body=body if body else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            return response.status, out, data
        finally:
            conn.close()

    def _reply(self, path: str, status: int, headers: dict, body: bytes, drop_after: int | None = None) -> None:
        sent = 0
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                payload = body if drop_after is None else body[:drop_after]
                self.wfile.write(payload)
                self.wfile.flush()
                sent = len(payload)
                if drop_after is not None and drop_after < len(body):
                    self._drop()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.owner._record(Request(self.command, path, self.headers.get("Range"), status, sent))

    def _drop(self) -> None:
        """Cut the connection mid-body, as a failing load balancer or a crashed server would.

        The short pause first lets the client take the bytes already sent, as it would on a real
        network where the drop comes later than the data (aiohttp, under s3fs, raises a pending
        connection error before handing out the bytes it has buffered).
        """
        time.sleep(DROP_PAUSE)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as a half-open (start, end); None for no/odd ranges."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        return max(size - int(last), 0), size
    return int(first), min(int(last) + 1, size) if last else size


class MotoServer:
    """moto's standalone S3 server on 127.0.0.1, a subprocess with a bounded start-up wait."""

    def __init__(self, port: int, startup_timeout: float = 60.0):
        self.port, self.startup_timeout = port, startup_timeout
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()  # moto logs every request: a pipe would fill up and block it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                         str(self.port)], stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"moto.server exited with {self.process.returncode}: "
                                   f"{self._log.read().decode(errors='replace')[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto.server did not answer on {self.url} within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def moto_for_benchmark(bucket: str) -> MotoServer:
    """moto's S3 server on a free port, the AWS_* environment of this process pointed at it, `bucket` created."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = MotoServer(port).start()
    os.environ.update({"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    os.environ.pop("AWS_PROFILE", None)
    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket=bucket)
    return server
