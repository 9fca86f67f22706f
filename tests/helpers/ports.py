"""Free loopback TCP ports for the servers that tests and benchmarks start.

Why one module: every harness needs ports, and several ports taken one after another can come
back equal (each is released before the next is asked for). ``free_ports`` holds all of them
bound until it has them all, so they are distinct. (``hack/cluster/localcluster.py`` has the
same function for the demo and the control plane, which must not import the tests.)

Why below the kernel's ephemeral range: a port handed out by ``bind(("127.0.0.1", 0))`` is an
ephemeral port, and every outgoing connection also takes its source port from that range. A
replica that connects to a peer's port before the peer has bound it (the mesh does, and retries)
can then get that very port as its source port: on loopback the kernel joins such a socket to
itself (a TCP self-connect), and the peer's bind fails with "Address already in use". Ports
below the range are never picked as source ports, so neither that nor another process's
outgoing connection can take them.

Why a port is not handed out twice: harnesses reserve ports for processes that start later (a
cluster's peer ports, one per slot, include those of replicas a rolling update starts minutes
on). Such a port is free until its process binds it, so a later call could give it to another
listener: a replacement replica once got its own peer port as its HTTP port and failed to bind.
Ports already handed out by this process come last, reused only when no other is left.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: The lowest port handed out (below it: well-known and commonly configured service ports).
LOWEST_PORT = 10000
#: Fewer candidates than this below the ephemeral range: let the kernel choose instead.
MIN_CANDIDATES = 1000
#: Every port this process has handed out (see the module docstring).
_handed_out: set[int] = set()


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral (source) port range; Linux's default where it cannot be read."""
    try:
        low, high = (int(n) for n in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1, below the ephemeral range (bound, then released)."""
    low = ephemeral_range()[0]
    candidates = list(range(LOWEST_PORT, low)) if low - LOWEST_PORT >= MIN_CANDIDATES else []
    random.shuffle(candidates)
    candidates.sort(key=_handed_out.__contains__)  # stable: fresh ports first, still shuffled
    socks: list[socket.socket] = []
    try:
        for port in candidates:
            if len(socks) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
        while len(socks) < count:  # no room below the range: let the kernel choose
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        ports = [int(sock.getsockname()[1]) for sock in socks]
        _handed_out.update(ports)
        return ports
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """One free TCP port on 127.0.0.1."""
    return free_ports(1)[0]
