"""Free loopback TCP ports for the servers that tests and benchmarks start.

Why one module: every harness needs ports, and several ports taken one after another can come
back equal (each is released before the next is asked for). ``free_ports`` holds all of them
bound until it has them all, so they are distinct. (``hack/cluster/localcluster.py`` has the
same function for the demo and the control plane, which must not import the tests.)
"""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 (bound, then released; fine for tests)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """One free TCP port on 127.0.0.1."""
    return free_ports(1)[0]
