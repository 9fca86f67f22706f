"""The ONNX graph of an HF model that the ONNX Runtime and OpenVINO peers run, exported once and cached.

Why it exists: both ONNX peers must run the very weights the PyTorch peer and our encoder read,
and exporting costs PyTorch (its own multi-GB environment) and tens of seconds. So the graph is
exported by the torch peer (``torch_peer.py``, ``export`` command: pooling included, eager
attention) and cached under ``$BERTSERVE_CACHE/bench-onnx/<key>/model.onnx``, where the key hashes
the model's ``config.json`` and weights and the exporter's pins: new weights or a new exporter
give a new graph, the same ones reuse it. The ONNX Runtime peer writes its optimized graph next
to it (``model.ort-<version>.onnx``). Driver side: standard library only (the export runs in the
torch peer's environment).

    python = ensure_peer_venv("ort")                 # peer_process
    path = exported_onnx(hf_dir)                     # -> .../bench-onnx/<key>/model.onnx
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from peer_process import PEER_PINS, PeerProcess, cache_dir

#: Bump when the exported graph changes shape (inputs, outputs, pooling) for the same weights.
EXPORT_FORMAT = "pooled-mean-v1"
WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def weights_key(hf_dir: Path, exporter_pins: tuple[str, ...] = PEER_PINS["torch"]) -> str:
    """Hash of the model's config and weight files (those present), the export format and the exporter's pins."""
    digest = hashlib.sha256()
    digest.update(f"{EXPORT_FORMAT}\n{' '.join(exporter_pins)}\n".encode())
    found = False
    for name in WEIGHT_FILES:
        path = hf_dir / name
        if path.is_file():
            found = found or name != "config.json"
            digest.update(f"{name}\n".encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    if not found:
        raise FileNotFoundError(f"no weights ({', '.join(WEIGHT_FILES[1:])}) in {hf_dir}")
    return digest.hexdigest()[:16]


def exported_onnx(hf_dir: Path, exporter: PeerProcess | None = None) -> Path:
    """``model.onnx`` for the HF model in ``hf_dir``, exported (by ``exporter`` or a fresh torch peer) if not cached."""
    out = cache_dir() / "bench-onnx" / weights_key(hf_dir) / "model.onnx"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second benchmark waits for the first one's export
        if out.is_file():
            return out
        partial = out.with_suffix(f".{os.getpid()}.partial")
        peer = exporter or PeerProcess("torch")
        try:
            reply = peer.request(cmd="export", dir=str(hf_dir), out=str(partial))
        finally:
            if exporter is None:
                peer.close()
        info = {"source": str(hf_dir), "exporter": reply.get("exporter"), "pins": PEER_PINS["torch"]}
        (out.parent / "export.json").write_text(json.dumps(info, indent=1) + "\n")
        partial.rename(out)
    return out
