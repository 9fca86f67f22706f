"""Mesh secrets for tests: ``-peer_key_file`` files as the operator's Secret would provide them."""

from __future__ import annotations

import secrets
from pathlib import Path


def write_peer_key(directory: Path, name: str = "peer.key", secret: bytes | None = None) -> str:
    """A file holding a random 48-byte secret (base64-like text, as in the Secret); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(secret if secret is not None else secrets.token_urlsafe(48).encode("ascii"))
    path.chmod(0o600)
    return str(path)
