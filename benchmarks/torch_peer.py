"""The transformers + PyTorch side of ``bench_model.py``, run inside its own virtual environment.

Why a separate process: PyTorch must stay out of the project's environment (DESIGN §5), and a
long-lived peer lets the benchmark interleave our model and this one round by round, so a noisy
neighbour on a shared machine slows both alike. It speaks JSON lines on stdin/stdout:

    {"cmd": "load", "name": "minilm", "dir": "<HF model dir>", "threads": 2}
    {"cmd": "run", "name": "minilm", "batch": 32, "seq": 128, "seed": 0, "repeats": 2, "bf16": false,
     "lengths": "full"}
        -> {"seconds": [..]}                    (one timing per forward pass; bf16: CPU autocast)
    {"cmd": "encode", "name": "minilm", "batch": 4, "seq": 25, "seed": 1, "lengths": "natural",
     "out": "<file.npy>"}
        -> {"ok": true}                         (pooled vectors, for the numeric cross-check)
    {"cmd": "versions"} -> {"torch": .., "transformers": ..}

Inputs come from ``bench_model.make_inputs`` itself (this script's folder is on ``sys.path``;
that module needs only numpy at import), with the same seed, so both frameworks see the same
arrays; ``lengths="natural"`` rows are padded to the batch's longest, as ``padding=True`` does.
Pooling is 1.10.0's masked REDUCE_MEAN over the last layer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import transformers
from transformers import BertModel

from bench_model import make_inputs
from peer_process import serve

MODELS: dict[str, Any] = {}


def forward(
    name: str, batch: int, seq: int, seed: int, *, bf16: bool = False, lengths: str = "full"
) -> np.ndarray:
    model = MODELS[name]
    ids, mask, types = (
        torch.from_numpy(a.astype(np.int64)) for a in make_inputs(batch, seq, seed, model.vocab, lengths)
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
                request["name"],
                request["batch"],
                request["seq"],
                request["seed"],
                bf16=request.get("bf16", False),
                lengths=request.get("lengths", "full"),
            )
            seconds.append(time.perf_counter() - started)
        return {"seconds": seconds}
    if cmd == "encode":
        pooled = forward(
            request["name"],
            request["batch"],
            request["seq"],
            request["seed"],
            lengths=request.get("lengths", "full"),
        )
        np.save(request["out"], pooled)
        return {"ok": True}
    raise ValueError(f"unknown command {cmd!r}")


if __name__ == "__main__":
    serve(handle)
