"""SHOW_STATUS's ``statistic`` computed with 1.10.0's formulas (its ``ServerStatistic`` and ``CappedHistogram``)."""

from __future__ import annotations

import pytest
from server_harness import client_for, fake_server

from bertserve_server.status import MAX_TRACKED_CLIENTS, ServerStatistic

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def test_avg_size_per_request_is_weighted_by_how_often_each_size_came(tmp_path):
    with fake_server(tmp_path, min_identity_len=16) as server, client_for(server) as bc:
        for size in (1, 1, 1, 9):
            bc.encode(["hello"] * size)
        stat = bc.server_status["statistic"]
    # 1.10.0: sum(size * count) / sum(count) = 12 / 4; min/max/num_* over the distinct sizes.
    assert stat["avg_size_per_request"] == 3.0
    assert (stat["min_size_per_request"], stat["max_size_per_request"]) == (1, 9)
    assert (stat["num_min_size_per_request"], stat["num_max_size_per_request"]) == (1, 1)
    assert stat["num_total_seq"] == 12 and stat["num_data_request"] == 4


def test_clients_beyond_the_tracked_ones_still_count():
    stat = ServerStatistic(clock=lambda: 0.0)
    extra = 100
    for i in range(MAX_TRACKED_CLIENTS + extra):
        for _ in range(1 + (i == 0) + 2 * (i == MAX_TRACKED_CLIENTS + extra - 1)):
            stat.record(f"client-{i}", 1, system=False)
    value = stat.value()
    assert value["num_total_client"] == MAX_TRACKED_CLIENTS + extra
    # client-0 (2 requests) was pushed out but still sets the statistics, as in 1.10.0.
    total = MAX_TRACKED_CLIENTS + extra + 1 + 2
    assert value["avg_request_per_client"] == total / (MAX_TRACKED_CLIENTS + extra)
    assert value["min_request_per_client"] == 1
    assert value["num_min_request_per_client"] == MAX_TRACKED_CLIENTS + extra - 2
    assert (value["max_request_per_client"], value["num_max_request_per_client"]) == (3, 1)
