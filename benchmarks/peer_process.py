"""Peer frameworks for the benchmarks: each in its own cached virtual environment, driven over JSON lines.

Why it exists: the benchmarks compare our encoder with other CPU runtimes (transformers+PyTorch,
ONNX Runtime, OpenVINO). None of them may enter the project's environment (DESIGN §5), and a
long-lived peer process lets a benchmark interleave our model and the peer's round by round, so
a noisy neighbour on a shared machine slows both alike. Every peer works the same way, so the
plumbing lives here once:

- ``ensure_peer_venv(name) -> Path``: the Python of ``$BERTSERVE_CACHE/bench-<name>-<pins>``,
  created on first use from ``PEER_PINS[name]`` (the directory name carries the pins, so a pin
  change makes a fresh environment; a lock file keeps two benchmarks from building it at once).
- ``PeerProcess(name)``: runs ``benchmarks/<name>_peer.py`` (or ``script=``) under that Python;
  ``request({"cmd": ...}) -> dict`` sends one JSON line and reads one back, raising
  ``PeerError`` on an ``{"error": ...}`` reply or a dead peer. Use it as a context manager.
- ``serve(handle)``: the peer side — the loop a ``*_peer.py`` script runs on stdin/stdout,
  turning exceptions into ``{"error": ...}`` replies. Peers import this module by its bare name
  (their script's folder is on ``sys.path``), so it needs the standard library only.

    with PeerProcess("ort") as peer:
        peer.request({"cmd": "load", "name": "minilm", "dir": str(hf_dir), "threads": 2})
        seconds = peer.request(cmd="run", name="minilm", batch=32, seq=128, seed=0, repeats=1)["seconds"]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent

#: Exact pins of each peer's environment. Why these: the current release of each runtime on
#: PyPI when the peers were added, numpy the same as the project's so arrays round-trip alike.
PEER_PINS: dict[str, tuple[str, ...]] = {
    # transformers+PyTorch: the reference most users would reach for. onnx and onnxscript are here
    # because this environment also exports the ONNX graph the other two peers run: the exported
    # graph is then exactly the model this peer runs, and no second multi-GB PyTorch install is needed.
    "torch": (
        "torch==2.15.0",
        "transformers==5.23.0",
        "safetensors==0.8.0",
        "numpy==2.4.6",
        "onnx==1.23.2",
        "onnxscript==0.7.2",
    ),
    # ONNX Runtime with its transformer optimizer: onnxruntime.transformers needs the onnx package,
    # and sympy for its symbolic shape inference (neither is an onnxruntime dependency).
    "ort": ("onnxruntime==1.32.0", "onnx==1.23.2", "sympy==1.14.0", "numpy==2.4.6"),
    # OpenVINO reads ONNX with its own frontend: no onnx package needed.
    "openvino": ("openvino==2026.4.1", "numpy==2.4.6"),
}


class PeerError(RuntimeError):
    """A peer answered with an error, or died."""


def cache_dir() -> Path:
    """``$BERTSERVE_CACHE`` (default ``~/.cache/bertserve``), where the peer environments live."""
    return Path(os.environ.get("BERTSERVE_CACHE", Path.home() / ".cache" / "bertserve"))


def venv_name(name: str, pins: tuple[str, ...]) -> str:
    """``bench-<name>-<pins>``, e.g. ``bench-ort-onnxruntime1.32.0-onnx1.23.2-numpy2.4.6``."""
    if not pins or any("==" not in pin for pin in pins):
        raise ValueError(f"peer {name!r}: every pin must be 'package==version', got {pins!r}")
    return "-".join(["bench", name, *(pin.replace("==", "") for pin in pins)])


def peer_venv(name: str) -> Path:
    """Where peer ``name``'s environment lives (created or not)."""
    if name not in PEER_PINS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEER_PINS)}")
    return cache_dir() / venv_name(name, PEER_PINS[name])


def ensure_peer_venv(name: str) -> Path:
    """The Python executable of peer ``name``'s environment, creating it (pip downloads) on first use."""
    venv = peer_venv(name)
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if done.is_file():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another benchmark may be building it right now
        if not done.is_file():
            pins = PEER_PINS[name]
            print(
                f"creating {venv} ({', '.join(pins)}); first use downloads them", file=sys.stderr, flush=True
            )
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--progress-bar", "off", *pins], check=True
            )
            done.touch()
    return python


class PeerProcess:
    """One peer script running in its environment; ``request`` is one JSON line out, one back."""

    def __init__(
        self,
        name: str,
        script: Path | None = None,
        *,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        script = script or HERE / f"{name}_peer.py"
        self.proc = subprocess.Popen(
            [str(ensure_peer_venv(name)), str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env} if env is not None else None,
        )

    def request(self, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> dict[str, Any]:
        """Send ``payload`` (and/or keyword fields) as one JSON line; the peer's reply as a dict."""
        message = {**(payload or {}), **fields}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise PeerError(f"{self.name} peer exited (code {self.proc.wait()})") from None
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"{self.name} peer exited (code {self.proc.wait()}) on {message.get('cmd')!r}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise PeerError(f"{self.name} peer, {message.get('cmd')!r}: {reply['error']}")
        return reply

    def close(self) -> None:
        """End of input: the peer's loop ends and it exits; killed if it has not within a minute."""
        if self.proc.stdin:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    handle: Callable[[dict[str, Any]], dict[str, Any]],
    lines: Iterable[str] | None = None,
    out: TextIO | None = None,
) -> None:
    """The peer side: one reply line per request line until end of input; errors become replies."""
    out = out or sys.stdout
    for line in lines if lines is not None else sys.stdin:
        if not line.strip():
            continue
        try:
            reply = handle(json.loads(line))
        except Exception as exc:  # report to the driver instead of dying silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
