"""One traced function per size class: small calls and large calls keep their own blocked weights.

oneDNN blocks a dense kernel's weights differently for few rows than for many, and TensorFlow's
MKL matmul keeps only the blocked copy made by a kernel's first call; a call of the other class
then re-blocks the whole weight matrix, every time. These tests check the routing rule
(``matmul_rows`` against the model's own ``kept_positions``), that both functions give the
single-function encoder's results, that the large-call function is built only on request (the
server does it after ready), and, through oneDNN's own log, that no call of either class
re-blocks a weight matrix once both functions are warm, while a single function does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf

#: Rows of the dense matmuls for the shapes used below: 1 x 25 is a small call, 4 x 25 a large one.
SMALL_SHAPE, LARGE_SHAPE = (1, 25), (4, 25)


def _masks(rng: np.random.Generator) -> list[np.ndarray]:
    masks = []
    for rows, seq in [(1, 1), (1, 7), (3, 5), (4, 25), (8, 16), (2, 64)]:
        lengths = rng.integers(0, seq + 1, rows)
        mask = (np.arange(seq)[np.newaxis, :] < lengths[:, np.newaxis]).astype(np.int32)
        masks.append(mask)
    odd = np.ones((3, 6), np.int32)
    odd[0] = 0  # an all-padding row keeps every position
    odd[1, 0] = 0  # a row whose first position is masked out still keeps position 0
    masks.append(odd)
    return masks


def test_matmul_rows_counts_the_positions_the_model_keeps() -> None:
    import tensorflow as tf

    from bertserve_server.model.modeling import kept_positions
    from bertserve_server.model.tf_encoder import matmul_rows

    for mask in _masks(np.random.default_rng(3)):
        kept = int(tf.shape(kept_positions(tf.constant(mask)))[0])
        assert matmul_rows(mask, skip_padding=True) == kept, mask
        assert matmul_rows(mask, skip_padding=False) == mask.size


def _inputs(rows: int, seq: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (rows, seq)).astype(np.int32)
    lengths = rng.integers(seq // 2, seq + 1, rows)
    lengths[0] = seq
    mask = (np.arange(seq)[np.newaxis, :] < lengths[:, np.newaxis]).astype(np.int32)
    ids[:, 0] = 101
    return ids * mask, mask, np.zeros_like(ids)


def test_both_size_classes_give_the_single_function_results(minilm_google_dir: Path) -> None:
    from bertserve_server.model.tf_encoder import SMALL_CALL_ROWS, TFEncoder, matmul_rows

    single = TFEncoder(minilm_google_dir, pooling_layer=[-1], size_classes=False)
    classes = TFEncoder(minilm_google_dir, pooling_layer=[-1])
    assert classes.size_classes and not single.size_classes
    classes.warm_up()
    assert not classes.large_calls_ready  # built on request only (the server: after ready)
    small, large = _inputs(2, 20, seed=1), _inputs(6, 40, seed=2)
    assert (
        matmul_rows(small[1], skip_padding=True) <= SMALL_CALL_ROWS < matmul_rows(large[1], skip_padding=True)
    )
    before = [classes.encode_arrays(*small), classes.encode_arrays(*large)]
    assert classes.prepare_large_calls() > 0
    assert classes.large_calls_ready
    assert classes.prepare_large_calls() == 0  # once
    after = [classes.encode_arrays(*small), classes.encode_arrays(*large)]
    expected = [single.encode_arrays(*small), single.encode_arrays(*large)]
    for got in (before, after):
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, atol=1e-5, rtol=0)


def test_no_size_classes_where_weights_are_variables_or_xla(tiny_model_dir: Path) -> None:
    from bertserve_server.model.tf_encoder import TFEncoder

    for encoder in (
        TFEncoder(tiny_model_dir, weights_as_constants=False),
        TFEncoder(tiny_model_dir, xla=True),
    ):
        assert not encoder.size_classes
        assert encoder.prepare_large_calls() == 0
        assert not encoder.large_calls_ready


class _SetAfterChecks(threading.Event):
    """An event that sets itself once it has been checked ``n`` times: a shutdown mid-build."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.checks = 0
        self._n = n

    def is_set(self) -> bool:
        self.checks += 1
        if self.checks > self._n:
            self.set()
        return super().is_set()


@pytest.mark.parametrize("checks_before_cancel", [0, 1, 2])
def test_a_cancelled_large_call_build_keeps_the_small_call_function(
    minilm_google_dir: Path, checks_before_cancel: int
) -> None:
    """Cancelled before it starts, after the trace or after the first warm-up call: no function
    is installed, calls keep working, and a later build (not cancelled) still completes."""
    from bertserve_server.model.tf_encoder import TFEncoder

    encoder = TFEncoder(minilm_google_dir, pooling_layer=[-1])
    encoder.warm_up()
    inputs = _inputs(6, 40, seed=3)  # more matmul rows than the small class
    expected = encoder.encode_arrays(*inputs)
    cancel = _SetAfterChecks(checks_before_cancel)
    assert encoder.prepare_large_calls(cancel) == 0
    assert cancel.checks == checks_before_cancel + 1  # it stopped at the first check that saw it
    assert not encoder.large_calls_ready
    np.testing.assert_array_equal(encoder.encode_arrays(*inputs), expected)
    assert encoder.prepare_large_calls(threading.Event()) > 0
    assert encoder.large_calls_ready
    np.testing.assert_allclose(encoder.encode_arrays(*inputs), expected, atol=1e-5, rtol=0)


#: Runs in a fresh interpreter: oneDNN reads ONEDNN_VERBOSE once, when it first runs.
REORDER_PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from bertserve_server.model.tf_encoder import TFEncoder
    encoder = TFEncoder(sys.argv[1], pooling_layer=[-1], size_classes=sys.argv[2] == "on")
    encoder.warm_up()
    encoder.prepare_large_calls()
    for rows, seq in ((1, 25), (4, 25), (1, 25), (4, 25)):
        ids = np.full((rows, seq), 1000, np.int32)
        print(f"=== call {rows}x{seq}", flush=True)
        encoder.encode_arrays(ids, np.ones_like(ids), np.zeros_like(ids))
    """
)


def _weight_reorders(model_dir: Path, size_classes: str) -> dict[str, int]:
    """Per call of the probe's last two (steady-state) calls, how many weight matrices oneDNN re-blocked."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", REORDER_PROBE, str(model_dir), size_classes],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    calls = done.stdout.split("=== call ")[-2:]
    counts = {}
    for call in calls:
        shape = call.split("\n", 1)[0]
        # A re-blocked weight matrix: a 2-D reorder into a blocked weights format (AB16b32a, ...).
        counts[shape] = len(re.findall(r"reorder,.*dst:f32::blocked:AB\w+.*,\d+x\d+,", call))
    return counts


@pytest.mark.skipif(
    "avx512f" not in Path("/proc/cpuinfo").read_text(errors="replace"),
    reason="the 80-row boundary is oneDNN's AVX-512 blocking; other ISAs block at other row counts",
)
def test_warm_size_classes_re_block_no_weights_while_one_function_does(minilm_google_dir: Path) -> None:
    with_classes = _weight_reorders(minilm_google_dir, "on")
    assert with_classes == {"1x25": 0, "4x25": 0}, with_classes
    single = _weight_reorders(minilm_google_dir, "off")
    # MiniLM: 6 layers x 4 dense kernels, each re-blocked on every 4 x 25 call of the one function.
    assert single["1x25"] == 0 and single["4x25"] >= 24, single


def test_the_no_size_classes_flag_reaches_the_encoder(tiny_model_dir: Path) -> None:
    from bertserve_api.contract import parse_argv
    from bertserve_server.worker import tf_encoder_factory

    for argv, expected in (([], True), (["-no_size_classes"], False)):
        config = parse_argv([f"-model_dir={tiny_model_dir}", "-cpu", *argv])
        encoder = tf_encoder_factory(config, ["/CPU:0"])("/CPU:0")
        assert encoder.size_classes is expected, argv
