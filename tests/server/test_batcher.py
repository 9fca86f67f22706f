"""The batcher: bounded admission, cross-request batches, length grouping, order-preserving reassembly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_encoder import FakeEncoder

from bertserve_server.batcher import PRIORITY_HEAD_START_S, Batcher
from bertserve_server.encoder import TokenizedInput, pad_batch
from bertserve_server.errors import Busy, EncodeFailed, RequestTooLarge, ShuttingDown
from bertserve_server.metrics import Metrics


def row(length: int, seed: int = 0) -> TokenizedInput:
    ids = tuple(2 + (seed * 7 + i * 3) % 50 for i in range(length))
    return TokenizedInput(ids, (0,) * length, (1,) * length, tuple(f"t{i}" for i in ids))


def rows(lengths: list[int], seed: int = 0) -> list[TokenizedInput]:
    return [row(n, seed + i) for i, n in enumerate(lengths)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(encoder: FakeEncoder | None = None, **kw) -> tuple[Batcher, FakeEncoder]:
    enc = encoder or FakeEncoder()
    kw.setdefault("max_wait_ms", 0.0)
    return Batcher(width=enc.hidden_size, dtype=enc.dtype, **kw), enc


def submit(batcher: Batcher, items: list[TokenizedInput], out_seq_len: int | None = None):
    res = batcher.reserve(len(items))
    batcher.enqueue(res, items, out_seq_len)
    return res.future


def run_all(batcher: Batcher, encoder: FakeEncoder) -> list[int]:
    sizes = []
    while True:
        db = batcher.next_batch(timeout=0.0)
        if db is None:
            return sizes
        sizes.append(db.size)
        try:
            batcher.complete(db, encoder.encode(db.batch))
        except RuntimeError as exc:
            batcher.fail(db, EncodeFailed(str(exc)))


def alone(encoder: FakeEncoder, item: TokenizedInput) -> np.ndarray:
    return encoder.encode(pad_batch([item], len(item)))[0]


def test_requests_from_different_clients_share_one_device_batch():
    batcher, enc = make(max_batch_size=64)
    futures = [submit(batcher, rows([5, 6, 7], seed=10 * k)) for k in range(4)]
    assert run_all(batcher, enc) == [12]
    for k, fut in enumerate(futures):
        expected = np.stack([alone(enc, r) for r in rows([5, 6, 7], seed=10 * k)])
        np.testing.assert_allclose(fut.result(0), expected, rtol=1e-6, atol=1e-6)


def test_request_larger_than_max_batch_size_is_split_and_reassembled_in_order():
    batcher, enc = make(max_batch_size=8)
    lengths = [(i * 7) % 13 + 3 for i in range(30)]
    items = rows(lengths)
    fut = submit(batcher, items)
    sizes = run_all(batcher, enc)
    assert max(sizes) <= 8 and sum(sizes) == 30 and len(sizes) >= 4
    result = fut.result(0)
    assert result.shape == (30, enc.hidden_size)
    for i, item in enumerate(items):
        np.testing.assert_allclose(result[i], alone(enc, item), rtol=1e-6, atol=1e-6)


def test_rows_are_grouped_by_token_length():
    batcher, enc = make(max_batch_size=4)
    # Long and short rows interleaved in one request: each batch should hold similar lengths.
    items = rows([100, 5, 100, 5, 100, 5, 100, 5])
    submit(batcher, items)
    seen = []
    while (db := batcher.next_batch(timeout=0.0)) is not None:
        seen.append(sorted(int(n) for n in db.batch.input_mask.sum(axis=1)))
        batcher.complete(db, enc.encode(db.batch))
    assert seen == [[5, 5, 5, 5], [100, 100, 100, 100]]


def test_a_long_row_does_not_join_a_batch_of_short_ones():
    batcher, enc = make(max_batch_size=64)
    short = submit(batcher, rows([40] * 8))
    long = submit(batcher, rows([200]))
    first = batcher.next_batch(timeout=0.0)
    assert first is not None and first.batch.seq_len == 40 and first.size == 8
    batcher.complete(first, enc.encode(first.batch))
    assert short.done() and not long.done()
    run_all(batcher, enc)
    assert long.result(0).shape == (1, enc.hidden_size)


def test_short_sequences_always_merge():
    batcher, enc = make(max_batch_size=64)
    submit(batcher, rows([30] * 4))
    submit(batcher, rows([3]))
    assert run_all(batcher, enc) == [5]


def test_small_requests_overtake_a_big_one_queued_just_before():
    clock = Clock()
    batcher, enc = make(max_batch_size=4, priority_batch_size=2, clock=clock)
    big = submit(batcher, rows([5] * 12))
    clock.now += 0.01
    small = submit(batcher, rows([5, 5]))
    first = batcher.next_batch(timeout=0.0)
    assert first is not None
    assert first.parts[0][0].reservation.future is small  # the small request leads the batch
    batcher.complete(first, enc.encode(first.batch))
    assert small.done() and not big.done()


def test_a_big_request_is_not_starved_by_a_stream_of_small_ones():
    clock = Clock()
    batcher, _ = make(max_batch_size=4, priority_batch_size=2, clock=clock)
    big = submit(batcher, rows([5] * 4))
    clock.now += PRIORITY_HEAD_START_S + 0.5
    submit(batcher, rows([5, 5]))
    first = batcher.next_batch(timeout=0.0)
    assert first is not None and first.parts[0][0].reservation.future is big


def test_full_queue_answers_busy_and_frees_capacity_when_done():
    batcher, enc = make(max_queue_size=10, max_batch_size=4)
    fut = submit(batcher, rows([5] * 8))
    with pytest.raises(Busy, match="max_queue_size=10"):
        batcher.reserve(3)
    assert batcher.depth == 8
    run_all(batcher, enc)
    assert fut.done() and batcher.depth == 0
    batcher.reserve(10)


def test_a_request_bigger_than_the_whole_queue_is_too_large_not_busy():
    batcher, _ = make(max_queue_size=10)
    with pytest.raises(RequestTooLarge, match="split"):
        batcher.reserve(11)


def test_partial_batch_waits_for_company_at_most_max_wait():
    """On the batcher's own clock: no batch before max_wait, late company joins, then it goes."""
    clock = Clock()
    batcher, _ = make(max_wait_ms=50.0, max_batch_size=8, clock=clock)
    first_arrival = clock.now
    submit(batcher, rows([5]))
    assert batcher.next_batch(timeout=0.0) is None  # alone, within max_wait: waits for company
    clock.now = first_arrival + batcher.max_wait_s / 2
    submit(batcher, rows([5, 5]))
    assert batcher.next_batch(timeout=0.0) is None  # still within the first request's max_wait
    clock.now = first_arrival + batcher.max_wait_s
    db = batcher.next_batch(timeout=0.0)
    assert db is not None and db.size == 3  # the late request made it into the same batch


def test_a_waiting_worker_takes_the_partial_batch_once_max_wait_has_passed():
    clock = Clock()
    batcher, _ = make(max_wait_ms=50.0, max_batch_size=8, clock=clock)
    submit(batcher, rows([5]))
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(batcher.next_batch(timeout=30.0)), daemon=True)
    worker.start()
    try:
        clock.now += batcher.max_wait_s
        worker.join(30.0)
        assert not worker.is_alive()
        assert got[0] is not None and got[0].size == 1  # type: ignore[attr-defined]
    finally:
        # A batcher that never hands the batch over must not keep the test run alive: its wait
        # is timed on the frozen test clock, so only stop() releases the worker.
        batcher.stop()
        worker.join(5.0)


def test_full_batch_does_not_wait():
    clock = Clock()
    batcher, _ = make(max_wait_ms=5000.0, max_batch_size=4, clock=clock)
    submit(batcher, rows([5] * 4))
    db = batcher.next_batch(timeout=0.0)  # no time passes on the batcher's clock
    assert db is not None and db.size == 4


def test_none_pooling_rows_are_padded_to_the_answer_length():
    enc = FakeEncoder(pooling_strategy="NONE")
    batcher, _ = make(enc, max_batch_size=16)
    items = rows([4, 9, 6])
    fut = submit(batcher, items, out_seq_len=25)
    run_all(batcher, enc)
    out = fut.result(0)
    assert out.shape == (3, 25, enc.hidden_size)
    for i, item in enumerate(items):
        np.testing.assert_allclose(out[i, : len(item)], alone(enc, item), rtol=1e-6, atol=1e-6)
        assert not out[i, len(item) :].any()  # padding positions are zero vectors


def test_encoder_failure_fails_only_the_requests_in_that_batch():
    enc = FakeEncoder(fail_if=lambda b: b.seq_len == 50)
    batcher, _ = make(enc, max_batch_size=64)
    bad = submit(batcher, rows([50, 50]))
    good = submit(batcher, rows([300]))
    assert run_all(batcher, enc) == [2, 1]
    assert isinstance(bad.exception(0), EncodeFailed)
    assert good.result(0).shape == (1, enc.hidden_size)
    assert batcher.depth == 0


def test_close_refuses_new_work_but_finishes_queued_work():
    batcher, enc = make()
    fut = submit(batcher, rows([5, 6]))
    batcher.close()
    with pytest.raises(ShuttingDown):
        batcher.reserve(1)
    run_all(batcher, enc)
    assert fut.result(0).shape[0] == 2
    assert batcher.wait_idle(0.1)


def test_stop_fails_queued_requests_and_releases_waiting_workers():
    batcher, _ = make()
    fut = submit(batcher, rows([5]))
    got: list[object] = []
    waiter = threading.Thread(
        target=lambda: got.append(Batcher.next_batch(batcher, timeout=30.0)), daemon=True
    )
    batcher.stop()
    waiter.start()
    waiter.join(5.0)
    assert not waiter.is_alive() and got == [None]
    assert isinstance(fut.exception(0), ShuttingDown)


def test_queue_depth_and_batch_sizes_are_measured():
    metrics = Metrics()
    batcher, enc = make(metrics=metrics, max_batch_size=4)
    submit(batcher, rows([5] * 6))
    assert metrics.value("bertserve_queue_depth_sentences") == 6
    run_all(batcher, enc)
    assert metrics.value("bertserve_queue_depth_sentences") == 0
    assert metrics.value("bertserve_batch_size_count") == 2
    assert metrics.value("bertserve_batch_size_sum") == 6


def test_concurrent_workers_and_submitters_lose_nothing():
    enc = FakeEncoder()
    batcher = Batcher(width=enc.hidden_size, dtype=enc.dtype, max_batch_size=16, max_wait_ms=1.0)
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            db = batcher.next_batch(timeout=0.05)
            if db is not None:
                batcher.complete(db, enc.encode(db.batch))

    workers = [threading.Thread(target=work, daemon=True) for _ in range(3)]
    for w in workers:
        w.start()
    futures = []
    try:
        for k in range(60):
            items = rows([3 + (k % 5)] * (1 + k % 9), seed=k)
            futures.append((items, submit(batcher, items)))
        for items, fut in futures:
            expected = np.stack([alone(enc, r) for r in items])
            np.testing.assert_allclose(fut.result(10), expected, rtol=1e-6, atol=1e-6)
    finally:
        stop.set()
        for w in workers:
            w.join(5)
