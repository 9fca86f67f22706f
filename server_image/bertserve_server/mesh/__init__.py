"""Answer routing between replicas: the classic two-port protocol behind one Kubernetes Service.

Why it exists: ``bert-serving-client`` opens two TCP connections, PUSH to ``-port`` and SUB on
``-port_out``. Behind a Service, kube-proxy balances each connection on its own, so the replica
that encodes a request is often not the one holding the client's SUB connection; 1.10.0 then
published into the void and the client hung. Here every replica joins a small mesh and an
answer goes to whichever replica holds the subscriber.

One idea per module:

* ``discovery``: the addresses behind ``-peer_service`` (the headless Service's A records,
  re-resolved every few seconds; or a ``host:port`` list).
* ``links``: one DEALER to every resolved address and the handshake on them (a ping answered
  with the peer's random node id identifies the peer — and the replica's own address, whose link
  is then closed).
* ``gossip``: what each peer announced — the subscriptions on its ``-port_out``, as numbered
  deltas and full snapshots — so each replica knows ``identity -> {replicas}``.
* ``routing``: where an answer goes (here, the replica(s) that announced its identity, or the
  hold list until one does) and the bounded hold list itself.
* ``handoff``: moving clients' PUSH connections off a replica that shuts down.
* ``node``: :class:`PeerMesh`, one replica's membership: lifecycle, the I/O thread that owns
  every mesh socket, and the glue between the modules above.

Costs: one extra hop (pod network) only for answers whose PUSH and SUB landed on different
replicas; an answer crosses the network at most once more; no gateway, so no single point of
failure. ``docs/scale-out.md`` has the full trade-offs and failure cases.
"""

from bertserve_server.mesh.node import PeerMesh

__all__ = ["PeerMesh"]
