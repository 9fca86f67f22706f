"""The ONNX Runtime peer as a batching server: ``POST /encode`` like ours, length-sorted batches.

Why it exists: the model benchmark compares runtimes on fixed batches, but a user serving
embeddings runs the model behind a server that gathers concurrent requests into batches. To
compare servers, the best CPU peer (ONNX Runtime, fp32, the transformer-optimized export of the
same weights) gets the batching a competent server would give it, and the same load generator
(``traffic.py``) measures both sides:

- each request is tokenized on arrival by Hugging Face's Rust ``tokenizers`` (WordPiece from the
  same ``vocab.txt``, lower-cased, cut at ``--max-seq-len``), as our server does;
- one model thread takes every row waiting (after the first, up to ``--max-wait-ms`` for company
  while fewer than ``--max-batch-size`` wait), sorts the rows by length and runs them in batches
  of at most ``--max-batch-size``, each padded only to its own longest row (:func:`plan_batches`),
  answering each request as soon as its last row is encoded (:func:`run_batches`);
- pooling is masked REDUCE_MEAN of the last layer (``-pooling_layer -1`` on our side);
- the answer is ``{"id", "result", "status": 200}`` as our ``/encode`` answers, the vectors
  written by orjson as ours are (float32 in the shortest exact form).

It runs inside the peer's virtual environment (``onnxruntime``, ``tokenizers``, numpy, orjson), listens on
127.0.0.1 only, prints ``listening <port> <JSON: versions, fused operator counts>`` once the model
is loaded and warmed up, and exits when
its standard input closes (the benchmark ended or died) or after ``--lifetime`` seconds. The
batching part imports neither onnxruntime nor tokenizers, so the tests import it from the project
environment.

    python ort_server.py --model model.onnx --config config.json --vocab vocab.txt --max-batch-size 32

``--model`` is the export of ``onnx_models.exported_onnx``; the graph it runs is that export after
``ort_peer.optimized`` (the ONNX Runtime transformer optimizer, exactly as ``bench_model``'s
ONNX Runtime peer runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson

#: The model: padded token ids and attention mask in, one pooled vector per row out.
Encode = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: Seconds a request waits for its rows to be encoded before the handler answers 503.
ANSWER_TIMEOUT_S = 300.0


def plan_batches(lengths: Sequence[int], max_batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches: shortest rows first, ``max_batch_size`` rows at most each.

    Sorting by length before cutting keeps rows of similar length together, so each batch pads
    little when padded to its own longest row. The sort is stable: equal lengths keep arrival order.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + max_batch_size] for i in range(0, len(order), max_batch_size)]


def pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 to the longest row, and the attention mask (1 on real tokens)."""
    longest = max(len(r) for r in rows)
    ids = np.zeros((len(rows), longest), np.int64)
    mask = np.zeros((len(rows), longest), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@dataclass(eq=False)
class Pending:
    """One request's rows; :attr:`done` is set when every row has its vector in :attr:`vectors`."""

    rows: list[list[int]]
    vectors: list[np.ndarray | None] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.rows)


class RowQueue:
    """Requests waiting for the model thread; :meth:`take` hands over everything queued."""

    def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._waiting: list[Pending] = []
        self._cond = threading.Condition()

    def submit(self, rows: list[list[int]]) -> Pending:
        pending = Pending(rows)
        with self._cond:
            self._waiting.append(pending)
            self._cond.notify()
        return pending

    def take(self, timeout: float) -> list[Pending]:
        """Every waiting request (none after ``timeout`` seconds with nothing queued).

        After the first arrives, waits up to ``max_wait_s`` more while fewer than
        ``max_batch_size`` rows are queued, so concurrent requests share a batch.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._waiting, timeout):
                return []
            until = time.monotonic() + self.max_wait_s
            while sum(len(p.rows) for p in self._waiting) < self.max_batch_size:
                left = until - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            taken, self._waiting = self._waiting, []
            return taken


@dataclass
class BatchStats:
    """What ``GET /stats`` answers, counted as our server's ``bertserve_batch_size`` and
    ``bertserve_batch_padding_ratio`` metrics count them: batches, rows, and the sum over batches
    of the share of their token positions that is padding."""

    batches: int = 0
    rows: int = 0
    padding_sum: float = 0.0

    def add(self, mask: np.ndarray) -> None:
        self.batches += 1
        self.rows += len(mask)
        self.padding_sum += 1.0 - float(mask.sum()) / mask.size


def run_batches(
    taken: list[Pending], max_batch_size: int, encode: Encode, stats: BatchStats | None = None
) -> int:
    """Encode the rows of ``taken`` in length-sorted batches, write each vector back, resolve each request.

    A request is resolved as soon as its last row is encoded (as our batcher does), not when the
    whole take is done, so its client sends its next request sooner. Returns the number of batches run. A
    failing batch fails every request it touched (with the error text); the others still get
    their answers.
    """
    owners = [(p, i) for p in taken for i in range(len(p.rows))]
    plan = plan_batches([len(p.rows[i]) for p, i in owners], max_batch_size)
    left = {id(p): len(p.rows) for p in taken}
    for batch in plan:
        members = [owners[j] for j in batch]
        try:
            ids, mask = pad([p.rows[i] for p, i in members])
            if stats is not None:
                stats.add(mask)
            vectors = encode(ids, mask)
            for (p, i), vector in zip(members, vectors, strict=True):
                p.vectors[i] = vector
        except Exception as exc:  # the answer says what failed; the server keeps serving
            for p, _ in members:
                p.error = f"{type(exc).__name__}: {exc}"
        for p, _ in members:
            left[id(p)] -= 1
            if not left[id(p)]:
                p.done.set()
    return len(plan)


class OrtEncoder:
    """An ONNX Runtime session on the exported model; masked mean of its last hidden states."""

    def __init__(self, model: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ONNX Runtime's defaults otherwise, as bench_model's peer (ort_peer.load): idle intra-op
        # threads spin. Turning that off saved CPU but halved the speed on the loaded 2-core machine.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.version = ort.__version__

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden, *_) = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})
        if hidden.ndim == 2:  # an export that pools itself
            return np.asarray(hidden, np.float32)
        weights = mask[:, :, np.newaxis].astype(np.float32)
        return np.asarray((hidden * weights).sum(1) / (weights.sum(1) + 1e-10), np.float32)


def wordpiece(vocab: str, max_seq_len: int) -> Callable[[list[str]], list[list[int]]]:
    """Texts -> token ids with [CLS]/[SEP], lower-cased, cut at ``max_seq_len`` (Rust ``tokenizers``).

    Built like ``BertWordPieceTokenizer`` (BERT normalizer and pre-tokenizer, WordPiece, [CLS] ...
    [SEP]) and called through ``encode_batch_fast`` (no character offsets), as our server does.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece.from_file(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    tokenizer.enable_truncation(max_seq_len)
    return lambda texts: [e.ids for e in tokenizer.encode_batch_fast(texts)]


class Server(ThreadingHTTPServer):
    """One thread per connection; a listen backlog for many clients connecting at once (stdlib's is 5)."""

    daemon_threads = True
    request_queue_size = 1024


def handler(
    queue: RowQueue, tokenize: Callable[[list[str]], list[list[int]]], stats: BatchStats | None = None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load generator's clients expect
        disable_nagle_algorithm = True  # as aiohttp does: no delayed-ACK stall on a small answer
        wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def reply(self, status: int, body: dict[str, Any]) -> None:
            # The vectors as our /encode writes them (float32, shortest exact form): the same
            # answer bytes, so the load generator parses alike for both sides.
            data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/stats" and stats is not None:
                self.reply(200, vars(stats))
            else:
                self.reply(200 if self.path == "/readyz" else 404, {"status": 200})

        def do_POST(self) -> None:
            if self.path != "/encode":
                self.reply(404, {"description": f"no route {self.path}", "status": 404})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                texts = body["texts"]
                if (
                    not isinstance(texts, list)
                    or not texts
                    or not all(isinstance(t, str) and t for t in texts)
                ):
                    raise ValueError('"texts" must be a non-empty list of non-empty strings')
            except (ValueError, KeyError, TypeError) as exc:
                self.reply(400, {"description": str(exc), "status": 400})
                return
            pending = queue.submit(tokenize(texts))
            if not pending.done.wait(ANSWER_TIMEOUT_S) or pending.error:
                self.reply(503, {"description": pending.error or "timed out", "status": 503})
                return
            result = np.stack(pending.vectors).astype(np.float32)  # type: ignore[arg-type]
            self.reply(200, {"id": body.get("id"), "result": result, "status": 200})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the exported .onnx file (optimized here)")
    parser.add_argument("--config", required=True, help="the HF config.json of the same weights")
    parser.add_argument("--vocab", required=True, help="vocab.txt of the same weights")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="as our -max_wait_ms")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--lifetime", type=float, default=3600, help="exit after this many seconds")
    args = parser.parse_args(argv)

    from ort_peer import optimized  # this folder is on sys.path: the model benchmark's ORT peer

    graph, fusions = optimized(Path(args.model), json.loads(Path(args.config).read_text()))
    encoder = OrtEncoder(str(graph), args.threads)
    tokenize = wordpiece(args.vocab, args.max_seq_len)
    for length in (8, 32, args.max_seq_len):  # warm-up, as our server warms up before /readyz
        encoder(*pad(tokenize(["hello world " * length])))
    queue = RowQueue(args.max_batch_size, args.max_wait_ms / 1000)
    stats = BatchStats()
    server = Server(("127.0.0.1", args.port), handler(queue, tokenize, stats))
    stop = threading.Event()

    def model_loop() -> None:
        while not stop.is_set():
            run_batches(queue.take(0.5), args.max_batch_size, encoder, stats)

    def stop_on_eof() -> None:
        sys.stdin.read()  # returns when the benchmark closes our stdin or exits
        stop.set()

    threading.Thread(target=model_loop, daemon=True).start()
    threading.Thread(target=stop_on_eof, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    facts = {"onnxruntime": encoder.version, "fusions": fusions, "threads": args.threads}
    print(f"listening {server.server_address[1]} {json.dumps(facts)}", flush=True)
    stop.wait(args.lifetime)
    stop.set()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
