"""Where one encoder call spends its time, op type by op type (TensorFlow's own profiler).

Why it exists: a throughput number says how far ours is from a peer or from the machine's fp32
peak, not why. Before changing the encoder for speed the time has to be found: in the GEMMs
(then only better kernels or less work help), in the ops around them (LayerNorm, transposes,
softmax, the attention batch matmuls), or between ops (dispatch: the wall time no kernel
accounts for). This script traces ``N`` calls of one shape with ``tf.profiler``, reads the
trace back (``XSpace`` protobuf) and prints, per op type, milliseconds per call (each op's
duration; with one inter-op thread ops run one after another and oneDNN spreads each over the
intra-op threads), share, and count; then the wall time per call and how much of it the kernels
fill. ``--write`` appends the table to ``benchmarks/results/profile.md`` with the machine.

    .venv/bin/python benchmarks/profile_model.py --model minilm --shape 32x25
    .venv/bin/python benchmarks/profile_model.py --model bert-base --shape 32x128 --write

Kernel times from a loaded machine are inflated like everything else; the shares stay useful.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_model import bert_base_dirs, flops_per_batch, make_inputs, minilm_dirs
from machine_facts import cores, cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "profile.md"
#: Kernel names of the matmuls that carry the model's FLOPs (dense layers; attention products).
DENSE_MATMUL = "_MklNativeFusedMatMul"
#: Zero-length events the profiler records around regions, not kernels.
TRACE_MARKERS = frozenset({"StartRegion", "StopRegion", "Record"})


def op_type_times(xspace_file: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Summed kernel time (ps) and count per op type from the compute threads of a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # the format tf.profiler writes

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace_file.read_bytes())
    times: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_"):  # the executor's compute threads
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # "<node name>:<op type>" is one kernel; "ExecutorState::Process" and the like are
                # spans around kernels, and the region markers take no time.
                if ":" in name and "::" not in name:
                    op_type = name.rsplit(":", 1)[1]
                    if op_type in TRACE_MARKERS:
                        continue
                    times[op_type] += event.duration_ps
                    counts[op_type] += 1
    return times, counts


def profile(model: str, batch: int, seq: int, calls: int) -> str:
    import tensorflow as tf

    from bertserve_server.model.tf_encoder import TFEncoder

    hf, google = minilm_dirs()
    if model == "bert-base":
        hf, google = bert_base_dirs(hf / "vocab.txt")
    encoder = TFEncoder(google, pooling_layer=[-1])
    encoder.warm_up()  # as the server: the small-call function first, then the large-call one
    encoder.prepare_large_calls()
    config = encoder.config
    inputs = make_inputs(batch, seq, 0, config.vocab_size)
    for _ in range(5):
        encoder.encode_arrays(*inputs)
    walls = []
    for _ in range(calls):
        started = time.perf_counter()
        encoder.encode_arrays(*inputs)
        walls.append(time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            encoder.encode_arrays(*inputs)
        tf.profiler.experimental.stop()
        trace = next(Path(logdir).rglob("*.xplane.pb"))
        times, counts = op_type_times(trace)
    per_call_ms = {op: ps / 1e9 / calls for op, ps in times.items()}
    kernels_ms = sum(per_call_ms.values())
    wall_ms = 1e3 * min(walls)
    dense_flops = flops_per_batch(config, config.num_hidden_layers, batch, seq) - (
        4.0 * batch * config.num_hidden_layers * seq * seq * config.hidden_size
    )
    dense_ms = per_call_ms.get(DENSE_MATMUL, 0.0)
    dense_rate = dense_flops / (dense_ms / 1e3) / 1e9 if dense_ms else 0.0
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"### {model}, batch {batch} x seq {seq} (every layer, fp32)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {cpu_model()}, {cores()} CPUs; "
        f"load average {load}; {calls} traced calls.",
        "",
        f"- wall time per call (best of {calls} untraced): **{wall_ms:.1f} ms** "
        f"({batch / wall_ms * 1e3:.0f} sentences/s)",
        f"- kernel time per call: {kernels_ms:.1f} ms ({kernels_ms / wall_ms:.0%} of the wall time; ops run one "
        f"after another, oneDNN spreads each over the {cores()} threads)",
        f"- dense-layer GEMMs: {dense_flops / 1e9:.2f} GFLOP per call in {dense_ms:.1f} ms of kernel time "
        f"= {dense_rate:.0f} GFLOP/s while they run",
        f"- ops per call: {sum(counts.values()) / calls:.0f}",
        "",
        "| op type | ms per call | share of kernel time | per call |",
        "|---|---:|---:|---:|",
    ]
    for op, ms in sorted(per_call_ms.items(), key=lambda kv: -kv[1]):
        if ms / kernels_ms < 0.001:
            continue
        lines.append(f"| `{op}` | {ms:.2f} | {ms / kernels_ms:.1%} | {counts[op] / calls:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("minilm", "bert-base"), default="minilm")
    parser.add_argument("--shape", default="32x25", help="BATCHxSEQ, full-length rows (default 32x25)")
    parser.add_argument("--calls", type=int, default=20, help="calls timed and traced (default 20)")
    parser.add_argument(
        "--write", action="store_true", help=f"append the table to {RESULTS.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    batch, seq = (int(v) for v in args.shape.lower().split("x"))
    report = profile(args.model, batch, seq, args.calls)
    print(report)
    if args.write:
        header = (
            ""
            if RESULTS.exists()
            else "# Per-op profiles of one encoder call (`benchmarks/profile_model.py`)\n\n"
        )
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(header + report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
