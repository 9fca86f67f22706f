"""The transformers + PyTorch side of ``bench_model.py``, run inside its own virtual environment.

Why a separate process: PyTorch must stay out of the project's environment (DESIGN §5), and a
long-lived peer lets the benchmark interleave our model and this one round by round, so a noisy
neighbour on a shared machine slows both alike. It speaks JSON lines on stdin/stdout:

    {"cmd": "load", "name": "minilm", "dir": "<HF model dir>", "threads": 2}
    {"cmd": "run", "name": "minilm", "batch": 32, "seq": 128, "seed": 0, "repeats": 2, "bf16": false}
        -> {"seconds": [..]}                    (one timing per forward pass; bf16: CPU autocast)
    {"cmd": "encode", "name": "minilm", "batch": 4, "seq": 25, "seed": 1, "out": "<file.npy>"}
        -> {"ok": true}                         (pooled vectors, for the numeric cross-check)
    {"cmd": "versions"} -> {"torch": .., "transformers": ..}

Inputs are generated here from the same seed as in ``bench_model.make_inputs`` (same numpy
generator), and pooling is 1.10.0's masked REDUCE_MEAN over the last layer.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch
import transformers
from transformers import BertModel

MODELS: dict[str, Any] = {}


def make_inputs(
    batch: int, seq: int, seed: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same as ``bench_model.make_inputs``: full-length rows of random ids framed by [CLS]/[SEP]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, min(vocab_size, 30000), (batch, seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones_like(ids), np.zeros_like(ids)


def forward(name: str, batch: int, seq: int, seed: int, bf16: bool = False) -> np.ndarray:
    model = MODELS[name]
    ids, mask, types = (
        torch.from_numpy(a.astype(np.int64)) for a in make_inputs(batch, seq, seed, model.vocab)
    )
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / (weights.sum(1) + 1e-10)
    return pooled.numpy()


def handle(request: dict[str, Any]) -> dict[str, Any]:
    cmd = request["cmd"]
    if cmd == "versions":
        return {"torch": torch.__version__, "transformers": transformers.__version__}
    if cmd == "load":
        torch.set_num_threads(int(request["threads"]))
        model = BertModel.from_pretrained(request["dir"], add_pooling_layer=False).eval()
        model.vocab = model.config.vocab_size
        MODELS[request["name"]] = model
        return {"ok": True, "attn": getattr(model.config, "_attn_implementation", "?")}
    if cmd == "run":
        seconds = []
        for _ in range(int(request["repeats"])):
            started = time.perf_counter()
            forward(
                request["name"], request["batch"], request["seq"], request["seed"], request.get("bf16", False)
            )
            seconds.append(time.perf_counter() - started)
        return {"seconds": seconds}
    if cmd == "encode":
        np.save(request["out"], forward(request["name"], request["batch"], request["seq"], request["seed"]))
        return {"ok": True}
    raise ValueError(f"unknown command {cmd!r}")


def main() -> None:
    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except Exception as exc:  # report to the driver instead of dying silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
