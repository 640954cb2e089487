"""The host side of the serve protocol, over a real socket pair standing in for
the engine's attach stream (the frames are the engine's, byte for byte)."""

import socket
import struct
import time

from herder.runtime import STDERR, STDOUT, Attachment
from minions import runner

NONCE = "n" * 32
MARKER = b"\x00HERDER-END:" + NONCE.encode() + b":"


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def run_with(stdout: bytes) -> tuple[runner.Outcome, Attachment, socket.socket]:
    """One run whose runner answers `stdout` in a single frame."""
    ours, engine = socket.socketpair()
    attachment = Attachment(ours)
    engine.sendall(frame(STDERR, b"err" + MARKER + b"\n") + frame(STDOUT, stdout))
    outcome = runner.exchange(
        attachment, request=b"request", nonce=NONCE, deadline=time.monotonic() + 5, output_cap=1000, file_cap=1000
    )
    return outcome, attachment, engine


def test_a_ready_signal_in_the_trailer_s_frame_is_kept_for_the_next_run():
    # A busy engine reads the trailer and, after a quick reset, the ready signal in one go.
    outcome, attachment, engine = run_with(b"hello\n" + MARKER + b"0:-1\n" + runner.READY)

    assert outcome.finished and outcome.exit_code == 0 and outcome.stdout == b"hello\n"
    assert outcome.output is None and outcome.stderr == b"err"
    assert outcome.after == runner.READY
    assert runner.await_ready(attachment, timeout=0.2, seen=outcome.after)
    assert not runner.await_ready(attachment, timeout=0.2), "the signal came only once"
    engine.close()


def test_an_output_file_ends_where_its_size_says_and_the_ready_signal_follows():
    outcome, attachment, engine = run_with(MARKER + b"0:3\nabc" + runner.READY[:5])

    assert outcome.output == b"abc"
    assert outcome.after == runner.READY[:5]
    engine.sendall(frame(STDOUT, runner.READY[5:]))
    assert runner.await_ready(attachment, timeout=2, seen=outcome.after)
    engine.close()


def test_a_ready_signal_after_the_run_is_read_from_the_stream():
    outcome, attachment, engine = run_with(MARKER + b"0:-1\n")

    assert outcome.after == b""
    assert not runner.await_ready(attachment, timeout=0.2, seen=outcome.after)
    engine.sendall(frame(STDOUT, runner.READY))
    assert runner.await_ready(attachment, timeout=2, seen=outcome.after)
    engine.close()
