"""Where the other replicas are: ``-peer_service`` parsed, resolved and re-resolved.

Why it exists: replicas route answers to each other (``mesh``), so each must know every
replica's address, including ones added or removed a moment ago. In Kubernetes the operator
passes the headless Service ``<name>-peers.<ns>.svc.<domain>``, whose DNS A records are the pod
IPs of every replica, ready or not; re-resolving it every few seconds follows scale-up, scale-down
and rolling updates without any API access. Outside Kubernetes (tests, plain hosts) the same flag
takes a comma-separated list of ``host[:port]`` entries; each entry is resolved the same way, so
one code path serves both.

A resolution error (DNS briefly unavailable) keeps the last list instead of emptying it: dropping
every peer because of a DNS hiccup would strand answers that are routable right now.

Addresses that stay unidentified are also *probed* with a plain TCP connect, so the mesh can tell
"a replica is there but has not finished the handshake" (worth waiting for before reporting
ready) from "nothing listens there" (a pod that is gone or not yet started: not worth waiting for).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

Address = tuple[str, int]
"""``(ip, port)`` of one replica's peer socket."""

RESOLVE_INTERVAL_S = 2.0
"""How often the peer list is re-resolved once it has resolved at least once."""
FIRST_RESOLVE_INTERVAL_S = 0.5
"""Retry interval until the first successful resolution (start-up should not wait long)."""
PROBE_TIMEOUT_S = 0.5


def parse_peer_service(spec: str, default_port: int) -> list[Address]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address, comma-separated.

    Raises ``ValueError`` with the offending entry, so a typo fails at start-up, not at the first
    answer that needs another replica.
    """
    entries: list[Address] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        port = default_port
        if item.startswith("["):
            host, closed, rest = item[1:].partition("]")
            if not closed or (rest and not rest.startswith(":")):
                raise ValueError(f"-peer_service entry {item!r}: expected [ipv6]:port")
            port_text = rest[1:]
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        else:  # a name, an IPv4 address, or a bare IPv6 address: the default port
            host, port_text = item, ""
        if port_text:
            if not port_text.isdigit():
                raise ValueError(f"-peer_service entry {item!r}: port {port_text!r} is not a number")
            port = int(port_text)
        if not host or not 0 < port < 65536:
            raise ValueError(f"-peer_service entry {item!r}: expected host[:port] with 0 < port < 65536")
        entries.append((host, port))
    if not entries:
        raise ValueError("-peer_service is empty: give a DNS name or host:port entries")
    return entries


def resolve(entries: Iterable[Address]) -> set[Address] | None:
    """Every address the entries resolve to; ``None`` if any entry failed to resolve."""
    found: set[Address] = set()
    for host, port in entries:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            logger.debug("cannot resolve peer entry %s: %s", host, exc)
            return None
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                found.add((str(sockaddr[0]), port))
    return found


def probe(address: Address, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at ``address``."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def endpoint(address: Address) -> str:
    """The ZeroMQ endpoint for an address (IPv6 in brackets)."""
    host, port = address
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class PeerDiscovery:
    """A daemon thread: resolve the entries, report the set, probe what the mesh asks about.

    ``on_resolved(addresses)`` is called after every successful resolution (even if unchanged,
    so a consumer may treat it as a heartbeat); ``probe_targets()`` returns the addresses worth
    probing now and ``on_probed(results)`` receives ``{address: listening}``. Callbacks run on
    this thread and must not block.
    """

    def __init__(
        self,
        entries: Sequence[Address],
        on_resolved: Callable[[set[Address]], None],
        *,
        probe_targets: Callable[[], set[Address]] | None = None,
        on_probed: Callable[[dict[Address, bool]], None] | None = None,
        interval_s: float = RESOLVE_INTERVAL_S,
    ) -> None:
        self.entries = list(entries)
        self.interval_s = interval_s
        self._on_resolved = on_resolved
        self._probe_targets = probe_targets
        self._on_probed = on_probed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-discovery", daemon=True)
        self.resolved_once = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop; a resolution stuck in DNS is not waited for beyond ``timeout`` (daemon thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception:  # discovery must outlive any single failure
                logger.exception("peer discovery failed; retrying")
            wait = self.interval_s if self.resolved_once else min(self.interval_s, FIRST_RESOLVE_INTERVAL_S)
            self._stop.wait(wait)

    def _turn(self) -> None:
        addresses = resolve(self.entries)
        if addresses is not None:
            if not self.resolved_once and not self._stop.is_set():
                logger.info(
                    "peers: %s resolves to %s",
                    ",".join(f"{h}:{p}" for h, p in self.entries),
                    ", ".join(endpoint(a) for a in sorted(addresses)) or "no address",
                )
            if self._stop.is_set():
                return
            self.resolved_once = True
            self._on_resolved(addresses)
        if self._probe_targets is None or self._on_probed is None:
            return
        results: dict[Address, bool] = {}
        for address in sorted(self._probe_targets()):
            if self._stop.is_set():
                return
            with contextlib.suppress(Exception):
                results[address] = probe(address)
        if results:
            self._on_probed(results)
