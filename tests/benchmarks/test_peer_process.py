"""The peer plumbing every benchmark peer uses: environment naming, the JSON-lines loop, errors.

Real child processes speak the protocol here; only the peer's environment is stood in for by this
interpreter (a marked-complete directory), so no test downloads anything.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

import peer_process
from peer_process import PeerError, PeerProcess, serve

BENCHMARKS = Path(peer_process.__file__).parent

ECHO_PEER = """
import os, sys
from peer_process import serve

def handle(request):
    if request["cmd"] == "echo":
        return {"echo": request["value"]}
    if request["cmd"] == "die":
        os._exit(3)
    raise ValueError(f"unknown command {request['cmd']!r}")

serve(handle)
"""


def test_venv_name_carries_every_pin_so_a_pin_change_makes_a_new_environment() -> None:
    assert peer_process.venv_name("ort", ("onnxruntime==1.32.0", "numpy==2.4.6")) == (
        "bench-ort-onnxruntime1.32.0-numpy2.4.6"
    )
    assert peer_process.venv_name("ort", ("onnxruntime==1.31.1", "numpy==2.4.6")) != (
        peer_process.venv_name("ort", ("onnxruntime==1.32.0", "numpy==2.4.6"))
    )


def test_unpinned_or_unknown_peers_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="onnxruntime>=1"):
        peer_process.venv_name("ort", ("onnxruntime>=1",))
    with pytest.raises(ValueError, match="'tvm'"):
        peer_process.peer_venv("tvm")


@pytest.fixture
def fake_ort_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ``ort`` environment, stood in for by this interpreter and marked complete."""
    monkeypatch.setenv("BERTSERVE_CACHE", str(tmp_path / "cache"))
    venv = peer_process.peer_venv("ort")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".complete").touch()
    script = tmp_path / "echo_peer.py"
    script.write_text(ECHO_PEER)
    return script


def test_a_complete_environment_is_reused_not_rebuilt(fake_ort_venv: Path) -> None:
    python = peer_process.ensure_peer_venv("ort")
    assert python == peer_process.peer_venv("ort") / "bin" / "python"


def test_requests_and_replies_round_trip_through_a_real_peer_process(fake_ort_venv: Path) -> None:
    with PeerProcess("ort", fake_ort_venv, env={"PYTHONPATH": str(BENCHMARKS)}) as peer:
        assert peer.request({"cmd": "echo", "value": [1, 2]}) == {"echo": [1, 2]}
        assert peer.request(cmd="echo", value="kw") == {"echo": "kw"}
        with pytest.raises(PeerError, match=r"ort peer, 'nope': ValueError: unknown command 'nope'"):
            peer.request(cmd="nope")
        assert peer.request(cmd="echo", value=3) == {"echo": 3}  # an error reply leaves the peer serving
    assert peer.proc.returncode == 0


def test_a_dead_peer_is_an_error_naming_it_and_its_exit_code(fake_ort_venv: Path) -> None:
    peer = PeerProcess("ort", fake_ort_venv, env={"PYTHONPATH": str(BENCHMARKS)})
    with pytest.raises(PeerError, match=r"ort peer exited \(code 3\) on 'die'"):
        peer.request(cmd="die")
    with pytest.raises(PeerError, match="exited"):
        peer.request(cmd="echo", value=1)
    peer.close()


def test_serve_answers_each_line_and_turns_exceptions_into_error_replies() -> None:
    out = io.StringIO()
    serve(lambda r: {"n": r["n"] + 1}, iter(['{"n": 1}\n', "\n", '{"m": 0}\n']), out)
    assert out.getvalue().splitlines() == ['{"n": 2}', '{"error": "KeyError: \'n\'"}']


def test_every_peer_is_exactly_pinned_and_has_its_script() -> None:
    for name, pins in peer_process.PEER_PINS.items():
        assert peer_process.venv_name(name, pins).startswith(f"bench-{name}-")
        assert (BENCHMARKS / f"{name}_peer.py").is_file(), name
