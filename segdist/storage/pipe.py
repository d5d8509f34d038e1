"""`pipe:COMMAND` sources: a shell command whose standard output is the object (as in WebDataset).

A pipe cannot seek, so a retry restarts the command and discards the bytes already delivered;
that costs a re-read of the prefix but keeps the stream exact. A nonzero exit status counts as a
transient failure (the command is typically `curl`, `aws s3 cp ... -` or `gsutil cat`), except
126/127 (not executable / not found), which no retry fixes. A command that writes nothing for
`timeout` seconds is killed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile

from .retry import PermanentError

PERMANENT_EXIT = {126: "command not executable", 127: "command not found"}


class PipeFailed(OSError):
    """The command ended with a nonzero status."""


class PipeBody:
    """A running command's standard output, read with a timeout per read."""

    remaining = None  # the length is unknown: the exit status tells whether it completed

    def __init__(self, command: str, timeout: float):
        self.command, self.timeout = command, timeout
        self._stderr = tempfile.TemporaryFile()  # a pipe for stderr could fill up and block the command
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=self._stderr,
                                        start_new_session=True)

    def readinto(self, buffer: memoryview) -> int:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"`{self.command}` wrote nothing for {self.timeout:g} s")
        data = os.read(self.process.stdout.fileno(), len(buffer))
        if not data:
            self._check_exit()
        buffer[:len(data)] = data
        return len(data)

    def _check_exit(self) -> None:
        try:
            status = self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"`{self.command}` closed its output but did not exit") from None
        if status != 0:
            self._stderr.seek(0)
            message = self._stderr.read()[-500:].decode(errors="replace").strip()
            if status in PERMANENT_EXIT:
                raise PermanentError(f"`{self.command}`: {PERMANENT_EXIT[status]}: {message}")
            raise PipeFailed(f"`{self.command}` exited with status {status}: {message}")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the shell and whatever it started
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process.stdout.close()
        self._stderr.close()


def open_pipe(command: str, start: int, timeout: float) -> PipeBody:
    """Start `command` and discard its first `start` bytes."""
    body = PipeBody(command, timeout)
    try:
        scratch = memoryview(bytearray(1 << 20))
        while start:
            count = body.readinto(scratch[:min(start, len(scratch))])
            if not count:
                raise PipeFailed(f"`{command}` ended before byte {start}, where the last attempt stopped")
            start -= count
    except BaseException:
        body.close()
        raise
    return body
