"""The session-end ZeroMQ safety net in tests/conftest.py fails a run only for a real leak.

Each case runs pytest in a child process on a one-test file that uses the real conftest, so the
exit status is the one CI would see.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("zmq")

CONFTEST = Path(__file__).with_name("conftest.py")

ZERO_COPY_SEND = """
import zmq

def test_a_large_send_closes_everything_it_opened():
    with zmq.Context() as context:
        sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        sender.bind("tcp://127.0.0.1:*")
        receiver.connect(sender.get(zmq.LAST_ENDPOINT))
        sender.send(b"x" * 1_000_000, copy=False)  # starts pyzmq's zero-copy collector thread
        assert len(receiver.recv()) == 1_000_000
        sender.close(linger=0)
        receiver.close(linger=0)
"""

LEAKED_SOCKET = """
import zmq

KEEP = []

def test_leaves_a_socket_open():
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.bind("tcp://127.0.0.1:*")
    KEEP.append((context, socket))
"""


def run_pytest_on(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(body)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pyzmq_zero_copy_collector_is_not_reported_as_a_leak(tmp_path: Path) -> None:
    result = run_pytest_on(tmp_path, ZERO_COPY_SEND)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "left open by tests" not in output
    assert "ContextTerminated" not in output


def test_a_socket_left_open_fails_the_run_and_is_named(tmp_path: Path) -> None:
    result = run_pytest_on(tmp_path, LEAKED_SOCKET)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "ZeroMQ contexts left open by tests" in output
    assert "tcp://127.0.0.1:" in output
