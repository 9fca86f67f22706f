"""Server subprocesses for tests: the production ``serve()`` path, on 127.0.0.1 with free ports.

``fake_serve.py`` runs ``bert-serving-start``'s own parsing, validation, signal handling and
drain with the numpy fake model, so a test exercises the real process (its sockets, threads and
GIL) without TensorFlow. Every wait is bounded; processes are killed by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests
from bert_serving.client import BertClient
from ports import free_ports
from readyz import wait_readyz
from server_harness import write_model_dir

HELPERS = Path(__file__).resolve().parent


class ServerProcess:
    """A server subprocess on 127.0.0.1 with free ports; output goes to a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, **ports: int) -> None:
        self.port = ports["port"]
        self.port_out = ports["port_out"]
        self.http_port = ports["http_port"]
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> requests.Response | None:
        try:
            return requests.get(self.url(path), timeout=2)
        except requests.ConnectionError:
            return None

    def client(self, **kw) -> BertClient:
        return BertClient(ip="127.0.0.1", port=self.port, port_out=self.port_out, timeout=30000, **kw)

    def wait_ready(self, timeout: float) -> list[int]:
        """Poll /readyz until 200; the statuses answered on the way."""
        return wait_readyz(self.proc, self.http_port, self.log_path, timeout, interval=0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def server_flags(model_dir: Path, *switches: str, **extra: str) -> tuple[list[str], dict[str, int]]:
    ports = dict(zip(("port", "port_out", "http_port"), free_ports(3), strict=True))
    flags = (
        [
            f"-model_dir={model_dir}",
            "-bind_host=127.0.0.1",
            "-cpu",
            f"-port={ports['port']}",
            f"-port_out={ports['port_out']}",
            f"-http_port={ports['http_port']}",
        ]
        + [f"-{k}={v}" for k, v in extra.items()]
        + [f"-{s}" for s in switches]
    )
    return flags, ports


def start_fake_process(
    directory: Path, delay_s: float, *switches: str, env: dict[str, str] | None = None, **extra: str
) -> ServerProcess:
    """``fake_serve.py`` with the given flags (``-name=value`` from ``extra``, ``-switch``)."""
    model_dir = write_model_dir(directory / "model")
    (model_dir / "bert_model.ckpt.index").write_bytes(b"")  # validation only looks for the prefix
    flags, ports = server_flags(model_dir, *switches, **extra)
    return ServerProcess(
        [sys.executable, str(HELPERS / "fake_serve.py"), str(delay_s), *flags],
        directory / "server.log",
        env=env,
        **ports,
    )
