"""The commands every ``bench_model`` peer answers, around one framework's forward pass.

Why it exists: the PyTorch, ONNX Runtime and OpenVINO peers differ only in how they load a model
and run one batch; the protocol around that — same inputs as ours (``bench_model.make_inputs``,
same seed), timing each call, saving pooled vectors for the cross-check — is written once here.
A peer script calls ``serve_model(versions=..., load=..., forward=...)``. Its commands:

    {"cmd": "versions"} -> {"<package>": "<version>", ..}
    {"cmd": "load", "name": "minilm", "dir": "<HF model dir>", "threads": 2, ..}
        -> {"ok": true, ..}                     (whatever the peer reports: attention kind, fusions)
    {"cmd": "run", "name": "minilm", "batch": 32, "seq": 128, "seed": 0, "repeats": 2,
     "lengths": "full"}
        -> {"seconds": [..]}                    (one timing per forward pass, inputs built before)
    {"cmd": "encode", "name": "minilm", "batch": 4, "seq": 25, "seed": 1, "lengths": "natural",
     "out": "<file.npy>"}
        -> {"ok": true}                         (pooled vectors, for the numeric cross-check)

``forward(model, (ids, mask, types), request)`` gets int64 arrays (``lengths="natural"`` rows
padded to the batch's longest, as ``padding=True`` does) and returns the pooled fp32 vectors:
1.10.0's masked REDUCE_MEAN over the last layer. Runs in the peer's own environment, so it needs
numpy and the standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import numpy as np

from bench_model import make_inputs
from peer_process import serve

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def serve_model(
    *,
    versions: dict[str, str],
    load: Callable[[dict[str, Any]], tuple[Any, int, dict[str, Any]]],
    forward: Callable[[Any, Arrays, dict[str, Any]], np.ndarray],
    extra: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
    lines: Iterable[str] | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve the commands above (``extra``: more, by name); ``load`` returns (model, vocab size, reply info)."""
    models: dict[str, tuple[Any, int]] = {}

    def arrays_for(request: dict[str, Any]) -> tuple[Any, Arrays]:
        model, vocab = models[request["name"]]
        arrays = make_inputs(
            request["batch"], request["seq"], request["seed"], vocab, request.get("lengths", "full")
        )
        ids, mask, types = (a.astype(np.int64) for a in arrays)
        return model, (ids, mask, types)

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "versions":
            return versions
        if cmd == "load":
            model, vocab, info = load(request)
            models[request["name"]] = (model, vocab)
            return {"ok": True, **info}
        if cmd == "run":
            model, arrays = arrays_for(request)
            seconds = []
            for _ in range(int(request["repeats"])):
                started = time.perf_counter()
                forward(model, arrays, request)
                seconds.append(time.perf_counter() - started)
            return {"seconds": seconds}
        if cmd == "encode":
            model, arrays = arrays_for(request)
            np.save(request["out"], np.asarray(forward(model, arrays, request), dtype=np.float32))
            return {"ok": True}
        if extra and cmd in extra:
            return extra[cmd](request)
        raise ValueError(f"unknown command {cmd!r}")

    serve(handle, lines, out)
