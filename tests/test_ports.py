"""The tests' port helper hands out ports no outgoing connection can take (see ``tests/helpers/ports.py``)."""

from __future__ import annotations

import socket
from pathlib import Path

import ports
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


def test_a_port_handed_out_and_not_yet_bound_is_not_handed_out_again(monkeypatch) -> None:
    """Harnesses reserve ports for processes that start later (a rolling update's replacement
    replicas have peer ports from the start); a later call must not give such a port to another
    listener, or the replacement's own HTTP port and peer port came out equal and it failed to bind.

    A range of 40 candidates makes a repeat certain without the rule (two draws of 20).
    """
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (LOWEST_PORT + 40, 60999))
    monkeypatch.setattr(ports, "MIN_CANDIDATES", 10)
    monkeypatch.setattr(ports, "_handed_out", set())
    first = free_ports(20)
    second = free_ports(20)
    assert all(LOWEST_PORT <= p < LOWEST_PORT + 40 for p in first + second), (first, second)
    assert not set(first) & set(second), sorted(set(first) & set(second))
    # Once every candidate has been handed out, ports are reused rather than refused.
    assert len(set(free_ports(20))) == 20
