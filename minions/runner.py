"""The host side of herder-run's serve protocol.

The protocol is written down in deploy/images/common/herder-run: four header
lines and a tar on stdin; the program's output on stdout and stderr, then on
stdout a trailer naming the exit code and the output file's size, then its bytes.
The trailer carries a nonce the program never sees, so its own output cannot end
the run early.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from herder.runtime import STDERR, STDOUT, Attachment, tar_of

_END = b"\x00HERDER-END:"
# How long after the host's own deadline herder-run kills the program itself,
# for when the host is gone.
BACKSTOP_SECONDS = 2
# How often a run waiting for output looks whether its client is still there.
_CANCEL_CHECK_SECONDS = 0.25


class Cancelled(Exception):
    """The client went away; the run was abandoned."""


@dataclass
class Outcome:
    stdout: bytes
    stderr: bytes
    exit_code: int | None
    timed_out: bool
    truncated: bool
    # The output file's bytes when one was asked for and produced within the cap.
    output: bytes | None
    output_too_large: bool
    # The trailer arrived: the runner finished and its container is exiting.
    finished: bool


class _Capped:
    """Keeps the first `cap` bytes of a stream and notes whether more came."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes | bytearray) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk


class _StdoutScanner:
    """Splits stdout into the program's output, the trailer and the output file."""

    def __init__(self, nonce: str, cap: int) -> None:
        self.marker = _END + nonce.encode() + b":"
        self.program = _Capped(cap)
        self._pending = bytearray()
        self._header: bytearray | None = None
        self.exit_code: int | None = None
        self.file_size: int | None = None
        self.file = bytearray()

    @property
    def done(self) -> bool:
        return self.file_size is not None and len(self.file) >= max(self.file_size, 0)

    def feed(self, chunk: bytes) -> None:
        if self._header is None:
            self._pending += chunk
            at = self._pending.find(self.marker)
            if at < 0:
                # Keep what could be the start of a marker split across frames.
                keep = len(self.marker) - 1
                self.program.add(self._pending[:-keep])
                del self._pending[:-keep]
                return
            self.program.add(self._pending[:at])
            chunk = bytes(self._pending[at + len(self.marker) :])
            self._pending.clear()
            self._header = bytearray()
        if self.file_size is None:
            self._header += chunk
            end = self._header.find(b"\n")
            if end < 0:
                return
            code, size = self._header[:end].split(b":")
            self.exit_code, self.file_size = int(code), int(size)
            chunk = bytes(self._header[end + 1 :])
        self.file += chunk

    def flush(self) -> None:
        """The stream ended without a trailer: what is pending was the program's."""
        if self._header is None:
            self.program.add(self._pending)
            self._pending.clear()


def new_nonce() -> str:
    return secrets.token_hex(16)


def encode_request(*, nonce: str, output: str | None, timeout: float, file_cap: int,
                   files: dict[str, bytes]) -> bytes:
    limit = math.ceil(timeout) + BACKSTOP_SECONDS
    header = f"{nonce}\n{output or ''}\n{limit}\n{file_cap}\n".encode()
    return header + tar_of(files)


def exchange(attachment: Attachment, *, request: bytes, nonce: str, deadline: float,
             output_cap: int, file_cap: int,
             cancelled: Callable[[], bool] = lambda: False) -> Outcome:
    """Send the request and read the run's output until the trailer, the end of
    the stream or the deadline (time.monotonic()), whichever comes first.

    Raises Cancelled as soon as `cancelled()` turns true."""
    stdout = _StdoutScanner(nonce, output_cap)
    stderr = _Capped(output_cap)
    timed_out = False
    try:
        attachment.send(request, timeout=max(deadline - time.monotonic(), 0.001))
        attachment.close_stdin()
        while not stdout.done:
            if cancelled():
                raise Cancelled
            remaining = deadline - time.monotonic()
            try:
                frame = attachment.read_frame(timeout=min(remaining, _CANCEL_CHECK_SECONDS))
            except TimeoutError:
                if remaining > _CANCEL_CHECK_SECONDS:
                    continue
                raise
            if frame is None:
                stdout.flush()
                break
            stream, data = frame
            if stream == STDOUT:
                stdout.feed(data)
            elif stream == STDERR:
                stderr.add(data)
    except TimeoutError:
        timed_out = True
        stdout.flush()
    finished = stdout.done
    size = stdout.file_size
    return Outcome(
        stdout=bytes(stdout.program.data),
        stderr=bytes(stderr.data),
        exit_code=stdout.exit_code if finished else None,
        timed_out=timed_out,
        truncated=stdout.program.truncated or stderr.truncated,
        output=bytes(stdout.file) if finished and size is not None and size >= 0 else None,
        output_too_large=size == -2,
        finished=finished,
    )
