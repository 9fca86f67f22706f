"""The tests' port helper hands out ports no outgoing connection can take (see ``tests/helpers/ports.py``)."""

from __future__ import annotations

import socket
from pathlib import Path

from ports import LOWEST_PORT, ephemeral_range, free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_range()
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(LOWEST_PORT <= p < low for p in ports), (ports, low)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_an_outgoing_connection_never_takes_a_handed_out_port() -> None:
    """The source ports of connections come from the ephemeral range, which the helper avoids."""
    low, high = ephemeral_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", free_ports(1)[0]))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            assert low <= client.getsockname()[1] <= high


def test_the_range_falls_back_to_linux_defaults(tmp_path: Path) -> None:
    assert ephemeral_range(tmp_path / "absent") == (32768, 60999)
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_range(tmp_path / "range") == (40000, 50000)
