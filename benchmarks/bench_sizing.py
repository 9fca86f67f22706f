"""Sizing facts for the user guide: model files on disk and the server's memory on CPU.

Why it exists: the guide's sizing table (PVC size, pod memory request/limit) must come from
measurements, not guesses. For each model shape (MiniLM L6/H384, BERT-base L12/H768, optionally
BERT-large L24/H1024) this writes a random checkpoint with the real shapes and a 30 522-token
vocabulary (Google's release layout, pretraining heads included) plus a ``run_classifier.py``-shaped
fine-tuned directory (``model.ckpt-0`` and ``model.ckpt-343`` with Adam slots), records the file
sizes, then starts the real ``bert-serving-start`` on CPU with the fine-tuned checkpoint and reads
the process's resident memory (``VmRSS``) once ready and its peak (``VmHWM``) after encoding full
batches at ``max_seq_len`` 128. Random weights have exactly the sizes of real ones; only
compression ratios differ (real checkpoints compress by about 7 %).

    .venv/bin/python benchmarks/bench_sizing.py                 # MiniLM + BERT-base -> results/sizing.md
    .venv/bin/python benchmarks/bench_sizing.py --large         # also BERT-large (about 10 GB of files)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from machine_facts import cores, cpu_model, memory_gib
from serving_bench import wait_large_calls

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from ports import free_ports  # noqa: E402
from readyz import wait_readyz  # noqa: E402  (test helpers: the one /readyz wait)

VOCAB_SIZE = 30522


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    heads: int

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden


SHAPES = {
    "minilm": Shape("MiniLM (L6, H384)", 6, 384, 12),
    "base": Shape("BERT-base (L12, H768)", 12, 768, 12),
    "large": Shape("BERT-large (L24, H1024)", 24, 1024, 16),
}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _post(url: str, payload: dict[str, object], timeout: float = 600.0) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def measure(shape: Shape, work: Path, batches: int, *, size_classes: bool = True) -> dict[str, float]:
    from bertserve_server.model.synthetic import write_random_bert, write_random_finetuned

    tokens = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"w{i}" for i in range(VOCAB_SIZE - len(tokens))]
    pretrained = write_random_bert(
        work / "pretrained",
        layers=shape.layers,
        hidden=shape.hidden,
        heads=shape.heads,
        intermediate=shape.intermediate,
        vocab=tokens,
        max_position_embeddings=512,
        with_pretraining_heads=True,
        weight_std=0.02,
    )
    tuned = write_random_finetuned(pretrained, work / "mrpc_output", step=343)
    zmq, zmq_out, http, peer = free_ports(4)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    log = work / "server.log"  # its tail is shown if the server exits or never gets ready
    with log.open("wb") as out:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("bert-serving-start")),
                f"-model_dir={pretrained}",
                f"-tuned_model_dir={tuned}",
                "-ckpt_name=model.ckpt-343",
                "-max_seq_len=128",
                "-max_batch_size=256",
                "-num_worker=1",
                "-cpu",
                f"-port={zmq}",
                f"-port_out={zmq_out}",
                f"-http_port={http}",
                f"-peer_port={peer}",
                *([] if size_classes else ["-no_size_classes"]),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_readyz(server, http, log, 900, what=f"{shape.name} server", interval=1.0)
        ready_rss = _status_kib(server.pid, "VmRSS")
        ready_peak = _status_kib(server.pid, "VmHWM")
        print(
            f"{shape.name}: ready, RSS {ready_rss / 1024:.0f} MiB, peak {ready_peak / 1024:.0f} MiB",
            flush=True,
        )
        # The large-call function is built after ready (a second copy of the weights as graph
        # constants): wait for it, as it is what a serving replica holds from then on.
        wait_large_calls(http, 900)
        classes_rss = _status_kib(server.pid, "VmRSS")
        classes_peak = _status_kib(server.pid, "VmHWM")
        print(f"{shape.name}: large calls ready, RSS {classes_rss / 1024:.0f} MiB", flush=True)
        text = " ".join(f"w{i}" for i in range(200))  # truncated to 128 tokens
        for _ in range(batches):
            _post(f"http://127.0.0.1:{http}/encode", {"id": 1, "texts": [text] * 256})
        loaded_peak = _status_kib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=120)
    mib = 1024 * 1024
    return {
        "pretrained_mib": _size(pretrained) / mib,
        "tuned_mib": _size(tuned) / mib,
        "tuned_one_ckpt_mib": sum(p.stat().st_size for p in tuned.glob("model.ckpt-343.*")) / mib,
        "ready_rss_mib": ready_rss / 1024,
        "ready_peak_mib": ready_peak / 1024,
        "classes_rss_mib": classes_rss / 1024,
        "classes_peak_mib": classes_peak / 1024,
        "peak_after_load_mib": loaded_peak / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also measure BERT-large (about 10 GB of files)")
    parser.add_argument("--only", choices=sorted(SHAPES), help="measure this shape alone")
    parser.add_argument("--batches", type=int, default=1, help="full batches of 256 x 128 tokens to encode")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sizing.md"))
    args = parser.parse_args()
    keys = [args.only] if args.only else ["minilm", "base", *(["large"] if args.large else [])]
    rows = []
    for key in keys:
        with tempfile.TemporaryDirectory(prefix=f"sizing-{key}-") as tmp:
            result = measure(SHAPES[key], Path(tmp), args.batches)
            without = measure(SHAPES[key], Path(tmp) / "one-function", args.batches, size_classes=False)
            result["one_function_ready_rss_mib"] = without["ready_rss_mib"]
            result["one_function_peak_mib"] = without["peak_after_load_mib"]
        print(key, json.dumps(result), flush=True)
        rows.append((SHAPES[key].name, result))
    lines = [
        "# Sizing measurements",
        "",
        f"Machine: {cpu_model()}, {cores()} cores, {memory_gib()}, Python {platform.python_version()}, "
        "no GPU. Command: `.venv/bin/python benchmarks/bench_sizing.py`.",
        "",
        "Random weights with the real shapes and a 30 522-token vocabulary; the fine-tuned directory is "
        "`run_classifier.py`-shaped (`model.ckpt-0` and `model.ckpt-343`, each with Adam slots). The server "
        "is the real `bert-serving-start -cpu -num_worker=1 -max_seq_len=128 -max_batch_size=256` serving "
        "`model.ckpt-343`; RSS is read from `/proc/<pid>/status` (`VmRSS`; `VmHWM` for peaks): when `/readyz` "
        "first answers 200 (the small-call function traced and warmed up), once `large_calls_ready` is true in "
        "`/status/server` (the large-call function, a second copy of the weights as graph constants, built in "
        "the background after ready), and after full batches of 256 × 128 tokens. The last two "
        "columns are a second server with `-no_size_classes` (`serving.sizeClasses: false`): one "
        "function for every call size.",
        "",
        "| model | pretrained dir | fine-tuned dir (2 checkpoints) | one fine-tuned checkpoint | RSS when ready "
        "| peak RSS until ready (incl. warm-up) | RSS once large calls ready | peak RSS after full batches "
        "| `-no_size_classes`: RSS when ready | `-no_size_classes`: peak RSS after full batches |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['pretrained_mib']:.0f} MiB | {r['tuned_mib']:.0f} MiB | {r['tuned_one_ckpt_mib']:.0f} MiB "
            f"| {r['ready_rss_mib']:.0f} MiB | {r['ready_peak_mib']:.0f} MiB | {r['classes_rss_mib']:.0f} MiB "
            f"| {r['peak_after_load_mib']:.0f} MiB | {r['one_function_ready_rss_mib']:.0f} MiB "
            f"| {r['one_function_peak_mib']:.0f} MiB |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
