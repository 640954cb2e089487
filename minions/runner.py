"""The host side of herder-run's serve protocol.

The protocol is written down in deploy/images/common/herder-run: five header
lines and a tar on stdin; the program's output on stdout and stderr, then an
end marker on both, on stdout followed by the exit code, the output file's size
and its bytes.
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
READY = b"\x00HERDER-READY\n"
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
    # What the runner wrote after the output file, read in the same frame: the
    # start of its ready signal once its reset is done (a busy engine may hand
    # both over together).
    after: bytes = b""


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


class _ProgramStream:
    """One of the program's streams, up to the runner's end marker."""

    def __init__(self, marker: bytes, cap: int) -> None:
        self.marker = marker
        self.program = _Capped(cap)
        self._pending = bytearray()
        self.ended = False

    def feed(self, chunk: bytes) -> bytes | None:
        """Returns what follows the marker once it is seen, else None."""
        self._pending += chunk
        at = self._pending.find(self.marker)
        if at < 0:
            # Keep what could be the start of a marker split across frames.
            keep = len(self.marker) - 1
            self.program.add(self._pending[:-keep])
            del self._pending[:-keep]
            return None
        self.program.add(self._pending[:at])
        rest = bytes(self._pending[at + len(self.marker) :])
        self._pending.clear()
        self.ended = True
        return rest

    def flush(self) -> None:
        """The stream ended without a marker: what is pending was the program's."""
        self.program.add(self._pending)
        self._pending.clear()


class _StdoutScanner(_ProgramStream):
    """stdout: the program's output, then the trailer and the output file."""

    def __init__(self, marker: bytes, cap: int) -> None:
        super().__init__(marker, cap)
        self._header: bytearray | None = None
        self.exit_code: int | None = None
        self.file_size: int | None = None
        self.file = bytearray()
        self.after = bytearray()

    @property
    def done(self) -> bool:
        return self.file_size is not None and len(self.file) >= max(self.file_size, 0)

    def feed(self, chunk: bytes) -> None:
        if self._header is None:
            rest = super().feed(chunk)
            if rest is None:
                return
            self._header, chunk = bytearray(), rest
        if self.file_size is None:
            self._header += chunk
            end = self._header.find(b"\n")
            if end < 0:
                return
            code, size = self._header[:end].split(b":")
            self.exit_code, self.file_size = int(code), int(size)
            chunk = bytes(self._header[end + 1 :])
        room = max(self.file_size, 0) - len(self.file)
        self.file += chunk[:room]
        self.after += chunk[room:]

    def flush(self) -> None:
        if self._header is None:
            super().flush()


def new_nonce() -> str:
    return secrets.token_hex(16)


def encode_request(*, nonce: str, output: str | None, timeout: float, file_cap: int, files: dict[str, bytes]) -> bytes:
    limit = math.ceil(timeout) + BACKSTOP_SECONDS
    archive = tar_of(files)
    header = f"{nonce}\n{output or ''}\n{limit}\n{file_cap}\n{len(archive)}\n".encode()
    return header + archive


def await_ready(attachment: Attachment, *, timeout: float, seen: bytes = b"") -> bool:
    """Read the runner's ready signal, of which `seen` was already read. False
    when the stream ends, says anything else, or nothing comes within
    `timeout`: the container is unfit."""
    deadline = time.monotonic() + timeout
    while len(seen) < len(READY):
        try:
            frame = attachment.read_frame(timeout=max(deadline - time.monotonic(), 0))
        except TimeoutError:
            return False
        if frame is None or frame[0] != STDOUT:
            return False
        seen += frame[1]
    return seen == READY


def exchange(
    attachment: Attachment,
    *,
    request: bytes,
    nonce: str,
    deadline: float,
    output_cap: int,
    file_cap: int,
    cancelled: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Send the request and read the run's output until the trailer, the end of
    the stream or the deadline (time.monotonic()), whichever comes first.

    Raises Cancelled as soon as `cancelled()` turns true."""
    # The runner ends both streams with the marker: stderr's bytes may reach
    # the host after stdout's trailer, and none of them may be lost.
    marker = _END + nonce.encode() + b":"
    stdout = _StdoutScanner(marker, output_cap)
    stderr = _ProgramStream(marker, output_cap)
    timed_out = False
    try:
        attachment.send(request, timeout=max(deadline - time.monotonic(), 0.001))
        while not (stdout.done and stderr.ended):
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
                stderr.flush()
                break
            stream, data = frame
            if stream == STDOUT:
                stdout.feed(data)
            elif stream == STDERR and not stderr.ended:
                stderr.feed(data)
    except TimeoutError:
        timed_out = True
        stdout.flush()
        stderr.flush()
    finished = stdout.done and stderr.ended
    size = stdout.file_size
    return Outcome(
        stdout=bytes(stdout.program.data),
        stderr=bytes(stderr.program.data),
        exit_code=stdout.exit_code if finished else None,
        timed_out=timed_out,
        truncated=stdout.program.truncated or stderr.program.truncated or size == -2,
        output=bytes(stdout.file) if finished and size is not None and size >= 0 else None,
        output_too_large=size == -2,
        finished=finished,
        after=bytes(stdout.after),
    )
