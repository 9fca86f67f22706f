"""Peer membership follows DNS: answers that add and remove replicas between two resolutions.

In Kubernetes ``-peer_service=<name>-peers`` is a headless Service: one name, the IPs of every
replica, changing as pods come and go; every replica re-resolves it every few seconds. Here the
name is answered by a DNS server this test runs on a loopback address (``DnsServer``), and the
test decides the answer. Each replica is a real server process (the production ``serve`` path
with the numpy model, ``fake_serve.py``) on its own loopback IP with the same ``-peer_port``, as
pods share a container port; it runs in a private mount namespace whose ``/etc/resolv.conf``
names the test's DNS server, so the system resolver of the process is the one under test.
Needs root (mount namespaces, port 53), like the image tests.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from peer_keys import write_peer_key
from polling import wait_for
from ports import free_ports
from readyz import readyz_status
from server_harness import write_model_dir

pytestmark = [pytest.mark.slow]

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
NAME = "bert-peers.bertserve.test"
DNS_IP = "127.53.0.1"
REPLICA_IPS = ("127.0.0.21", "127.0.0.22", "127.0.0.23")


class DnsServer:
    """A minimal authoritative DNS server for one name (A records, TTL 0), on ``DNS_IP:53``/UDP.

    ``answer`` is the set of IPs returned now; ``queries`` counts A queries for the name, so a
    test can wait for the next resolution instead of sleeping.
    """

    def __init__(self) -> None:
        self.answer: set[str] = set()
        self.queries = 0
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((DNS_IP, 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def set_answer(self, ips: set[str]) -> int:
        """Answer ``ips`` from now on; returns the query count at the switch."""
        with self._lock:
            self.answer = set(ips)
            return self.queries

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            reply = self._reply(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _reply(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        (qid,) = struct.unpack("!H", data[:2])
        labels, pos = [], 12
        while pos < len(data) and data[pos]:
            labels.append(data[pos + 1 : pos + 1 + data[pos]].decode("ascii", "replace"))
            pos += 1 + data[pos]
        question = data[12 : pos + 5]
        qtype, _ = struct.unpack("!HH", data[pos + 1 : pos + 5])
        name = ".".join(labels).lower()
        if name != NAME:
            return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        with self._lock:
            ips = sorted(self.answer) if qtype == 1 else []
            if qtype == 1:
                self.queries += 1
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(ip) for ip in ips)
        return struct.pack("!HHHHHH", qid, 0x8580, 1, len(ips), 0, 0) + question + answers

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


MESH_SECRET = b"dns-test-mesh-secret-" + b"0123456789" * 4
"""Every replica of the test reads the same secret, as from the BertServer's Secret."""


class PeerProcess:
    """One replica: ``fake_serve.py`` in a mount namespace that resolves through ``DnsServer``."""

    def __init__(self, ip: str, model_dir: Path, resolv_conf: Path, log_dir: Path, peer_port: int) -> None:
        self.ip = ip
        self.port, self.port_out, self.http_port = free_ports(3)
        argv = [
            sys.executable,
            str(HELPERS / "fake_serve.py"),
            "0",
            f"-model_dir={model_dir}",
            f"-bind_host={ip}",
            "-cpu",
            f"-port={self.port}",
            f"-port_out={self.port_out}",
            f"-http_port={self.http_port}",
            f"-peer_service={NAME}",
            f"-peer_port={peer_port}",
            f"-peer_key_file={write_peer_key(log_dir / 'secrets', secret=MESH_SECRET)}",
        ]
        script = f'mount --bind "{resolv_conf}" /etc/resolv.conf && exec "$@"'
        self.log_path = log_dir / f"{ip}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "replica", *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def metric(self, name: str) -> float | None:
        try:
            text = requests.get(f"http://{self.ip}:{self.http_port}/metrics", timeout=2).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def readyz(self) -> int:
        return readyz_status(self.http_port, self.ip)

    def membership(self) -> tuple[float | None, float | None]:
        """(addresses the name resolves to, peers connected), as this replica reports them."""
        return self.metric("bertserve_peer_addresses"), self.metric("bertserve_peers_connected")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    if os.geteuid() != 0:
        pytest.fail("needs root: a DNS server on port 53 and mount namespaces (unshare)", pytrace=False)
    server = DnsServer()
    yield server
    server.close()


def test_replicas_follow_dns_answers_that_add_and_remove_peers(dns: DnsServer, tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path / "model")
    (model_dir / "bert_model.ckpt.index").write_bytes(b"")  # validation only looks for the prefix
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {DNS_IP}\noptions timeout:2 attempts:3\n")
    (peer_port,) = free_ports(1)
    a_ip, b_ip, c_ip = REPLICA_IPS
    replicas: dict[str, PeerProcess] = {}
    try:
        dns.set_answer({a_ip, b_ip})
        for ip in (a_ip, b_ip):
            replicas[ip] = PeerProcess(ip, model_dir, resolv_conf, tmp_path, peer_port)
        a, b = replicas[a_ip], replicas[b_ip]
        for r in (a, b):
            wait_for(lambda r=r: r.readyz() == 200, 60, f"{r.ip} ready in a mesh of two")
            wait_for(lambda r=r: r.membership() == (2.0, 1.0), 30, f"{r.ip} to see two replicas")

        # Scale-up: the name now also answers a third replica, which starts.
        replicas[c_ip] = PeerProcess(c_ip, model_dir, resolv_conf, tmp_path, peer_port)
        dns.set_answer({a_ip, b_ip, c_ip})
        c = replicas[c_ip]
        wait_for(lambda: c.readyz() == 200, 60, "the new replica ready")
        for r in (a, b, c):
            wait_for(lambda r=r: r.membership() == (3.0, 2.0), 30, f"{r.ip} to see three replicas")

        # Scale-down: the name stops answering B (a deleted pod leaves the headless Service) and
        # B goes away; A and C, after their next resolutions, count two again.
        at_switch = dns.set_answer({a_ip, c_ip})
        b.stop()
        wait_for(lambda: dns.queries >= at_switch + 4, 30, "A and C to resolve again")
        for r in (a, c):
            wait_for(lambda r=r: r.membership() == (2.0, 1.0), 30, f"{r.ip} to drop the removed replica")
            assert r.readyz() == 200
    except AssertionError as exc:
        logs = "\n".join(f"--- {ip}:\n{r.log[-1500:]}" for ip, r in replicas.items())
        raise AssertionError(f"{exc}\n(DNS A queries: {dns.queries})\n{logs}") from None
    finally:
        for r in replicas.values():
            r.stop()
