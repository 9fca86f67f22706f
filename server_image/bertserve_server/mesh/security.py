"""Who may speak on the peer port: replicas holding the mesh's shared secret, and nobody else.

Why it exists: the peer port forwards answers and subscription lists between replicas. Unguarded,
any pod that can reach it can learn node ids, make a replica ignore a healthy peer (a forged
"leaving"), or have a forged answer published to a client. So every mesh connection uses
CurveZMQ, and the keys come from one secret that only the replicas of one BertServer have
(``-peer_key_file``; in Kubernetes a Secret the operator creates once and mounts read-only):

* the secret is stretched (HMAC-SHA-256 with a fixed label) into one Curve25519 secret key; its
  public key follows. Every replica derives the *same* key pair, so no key distribution, no
  list of members: holding the secret is being a member;
* each replica's ROUTER is a CURVE server with that key pair; each DEALER is a CURVE client that
  expects exactly that server key and presents the same key pair as its own;
* a ZAP handler on the ROUTER accepts only the derived public key as a client key.

Someone without the secret cannot complete the handshake in either direction: as a client it
cannot prove the client key (CURVE's vouch), as a server (a hijacked address) it cannot answer
the client's HELLO. libzmq then closes the connection before any mesh message is read or sent;
what the other side sees is the ZMTP greeting (which names the CURVE mechanism) and a closed
connection. Once the handshake is done, every frame is encrypted and authenticated.

Rotation is a rolling restart with a new secret (``docs/scale-out.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth.thread
from zmq.utils import z85

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
"""A shorter secret is refused at start-up: the mesh's keys are only as strong as it."""
MAX_SECRET_BYTES = 64 * 1024
"""A larger file is not a key (a wrong path); refused instead of read whole."""
KEY_LABEL = b"bertserve mesh curve25519 key v1"
"""Domain separation: the secret is never used as a key directly, only through this label."""
ZAP_DOMAIN = "bertserve-mesh"


class PeerKeyError(ValueError):
    """``-peer_key_file`` missing, unreadable or too short; the message names the flag."""


@dataclass(frozen=True)
class MeshKeys:
    """The mesh's Curve25519 key pair (Z85, as libzmq takes them)."""

    public: bytes
    secret: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> MeshKeys:
        seed = hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()
        z85_secret = z85.encode(seed)
        return cls(public=zmq.curve_public(z85_secret), secret=z85_secret)


def load_secret(path: str | None) -> bytes:
    """The secret in ``path`` (see :func:`key_bytes`); :class:`PeerKeyError` otherwise."""
    if not path:
        raise PeerKeyError(
            "-peer_service needs -peer_key_file=PATH: a file with a random secret of at least "
            f"{MIN_SECRET_BYTES} bytes, the same on every replica (the operator mounts one from a Secret)"
        )
    file = Path(path)
    try:
        if file.stat().st_size > MAX_SECRET_BYTES:
            raise PeerKeyError(
                f"-peer_key_file {path} is larger than {MAX_SECRET_BYTES} bytes; not a key file"
            )
        secret = key_bytes(file.read_bytes())
    except OSError as exc:
        raise PeerKeyError(f"-peer_key_file {path}: cannot read it ({exc.strerror or exc})") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise PeerKeyError(
            f"-peer_key_file {path} holds {len(secret)} bytes; the mesh secret needs at least "
            f"{MIN_SECRET_BYTES} random bytes (e.g. head -c 48 /dev/urandom | base64 > {file.name})"
        )
    return secret


_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\r\x0b\x0c")


def key_bytes(raw: bytes) -> bytes:
    """The key a key file holds: text loses the whitespace around it, binary is kept as it is.

    Why two rules: ``head -c 48 /dev/urandom | base64 > peer.key`` ends in a newline that
    another replica's copy (pasted into a Secret) may lack, so text is stripped. But a raw
    random key begins or ends with a byte that happens to be whitespace about one time in
    21; stripping it would shorten the key (a 32-byte key then fails the minimum and the pod
    crash-loops) and change it. A random binary key is almost never all printable.
    """
    return raw.strip() if all(byte in _TEXT_BYTES for byte in raw) else raw


def secure_server(sock: zmq.Socket[Any], keys: MeshKeys) -> None:
    """Make ``sock`` (the ROUTER) a CURVE server whose clients go through the ZAP domain."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def secure_client(sock: zmq.Socket[Any], keys: MeshKeys) -> None:
    """Make ``sock`` (a DEALER) a CURVE client that talks only to a server holding the mesh key."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class _OnlyMeshKey:
    """ZAP credentials provider: the derived public key, and only it."""

    def __init__(self, keys: MeshKeys, on_refused: Callable[[], None]) -> None:
        self._public = keys.public
        self._on_refused = on_refused

    def callback(self, domain: str, key: bytes) -> bool:
        if hmac.compare_digest(key, self._public):
            return True
        self._on_refused()
        return False


def start_authenticator(
    context: zmq.Context[Any], keys: MeshKeys, on_refused: Callable[[], None]
) -> zmq.auth.thread.ThreadAuthenticator:
    """The ZAP handler for ``context`` (one thread); stop it before terminating the context."""
    auth = zmq.auth.thread.ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_OnlyMeshKey(keys, on_refused))
    return auth
