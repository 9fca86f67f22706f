"""The dense-layer GEMMs of one MiniLM call alone: TensorFlow (oneDNN) vs ONNX Runtime (MLAS).

Why it exists: at batch 1 and 4 ours trails the peers by more than the ops around the GEMMs can
explain (``results/profile.md``, finding 4). This isolates the GEMMs: the 24 weight matrices of
MiniLM's six layers (384 x 1152 QKV, 384 x 384 attention output, 384 x 1536 and 1536 x 384 feed
forward; random values, fixed seed), each multiplied by an ``M``-row activation, in one graph per
runtime, every product an output so nothing is pruned; best of 40 calls after 5 warm-up calls.
The ONNX Runtime side runs in the ONNX Runtime peer's environment (``peer_process``), with the
peer's session options (2 intra-op threads). ``--resident`` repeats one layer's 4 matrices six
times instead (7 MB, inside the 32 MiB L3), to tell a memory-bound GEMM from a compute-bound one.

    .venv/bin/python benchmarks/gemm_small_rows.py
    .venv/bin/python benchmarks/gemm_small_rows.py --resident
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HIDDEN, INTERMEDIATE, LAYERS = 384, 1536, 6
ROWS = (1, 25, 100, 800)


def weights(resident: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    layer_shapes = [(HIDDEN, 3 * HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]
    distinct = 1 if resident else LAYERS
    mats = [rng.standard_normal(shape, dtype=np.float32) for _ in range(distinct) for shape in layer_shapes]
    return mats * (LAYERS // distinct)


def best_seconds(call: Callable[[], object], calls: int = 40) -> float:
    for _ in range(5):
        call()
    best = float("inf")
    for _ in range(calls):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best


def inputs(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows)
    return (
        rng.standard_normal((rows, HIDDEN), dtype=np.float32),
        rng.standard_normal((rows, INTERMEDIATE), dtype=np.float32),
    )


def time_tensorflow(mats: list[np.ndarray]) -> dict[int, float]:
    from bertserve_server.model.tf_encoder import configure_runtime

    configure_runtime()  # the server's thread settings
    import tensorflow as tf

    consts = [tf.constant(m) for m in mats]

    @tf.function
    def products(x: tf.Tensor, x4: tf.Tensor) -> list[tf.Tensor]:
        return [tf.matmul(x if w.shape[0] == HIDDEN else x4, w) for w in consts]

    result = {}
    for rows in ROWS:
        x, x4 = (tf.constant(a) for a in inputs(rows))
        result[rows] = best_seconds(lambda x=x, x4=x4: products(x, x4)[-1].numpy())
    return result


def time_onnxruntime(mats: list[np.ndarray]) -> dict[int, float]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, outputs = [], [], []
    for i, m in enumerate(mats):
        initializers.append(numpy_helper.from_array(m, f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x" if m.shape[0] == HIDDEN else "x4", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "dense_layers",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", HIDDEN]),
            helper.make_tensor_value_info("x4", TensorProto.FLOAT, ["rows", INTERMEDIATE]),
        ],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2  # as bench_model's ONNX Runtime peer on this machine
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    result = {}
    for rows in ROWS:
        x, x4 = inputs(rows)
        result[rows] = best_seconds(lambda x=x, x4=x4: session.run(None, {"x": x, "x4": x4}))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resident", action="store_true", help="one layer's matrices six times (cache-resident)"
    )
    parser.add_argument("--onnxruntime-only", action="store_true", help=argparse.SUPPRESS)  # the peer side
    args = parser.parse_args(argv)
    mats = weights(args.resident)
    if args.onnxruntime_only:
        print(json.dumps(time_onnxruntime(mats)))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    import peer_process

    python = peer_process.ensure_peer_venv("ort")
    extra = ["--resident"] if args.resident else []
    peer_out = subprocess.run(
        [str(python), __file__, "--onnxruntime-only", *extra], check=True, capture_output=True, text=True
    ).stdout
    ours = time_tensorflow(mats)
    peer = {int(k): v for k, v in json.loads(peer_out.strip().splitlines()[-1]).items()}
    flops_per_row = sum(2 * m.shape[0] * m.shape[1] for m in mats)
    megabytes = sum({id(m): m.nbytes for m in mats}.values()) / 2**20  # each matrix once
    print(
        f"24 dense-layer GEMMs of MiniLM, {megabytes:.0f} MiB of weights ({'resident' if args.resident else 'distinct'})"
    )
    print("| rows | TensorFlow (oneDNN) ms | GFLOP/s | ONNX Runtime (MLAS) ms | GFLOP/s | ours/peer |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rows in ROWS:
        t, p = ours[rows], peer[rows]
        print(
            f"| {rows} | {1e3 * t:.2f} | {flops_per_row * rows / t / 1e9:.0f} | {1e3 * p:.2f} | "
            f"{flops_per_row * rows / p / 1e9:.0f} | {p / t:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
