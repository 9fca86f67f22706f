"""The SHOW_CONFIG / SHOW_STATUS document, with every key bert-as-service 1.10.0 sent.

Why it exists: the 1.10.0 client reads ``server_version``, ``max_seq_len`` and
``show_tokens_to_client`` from it at connect time (a missing key is a ``KeyError`` in the
client), and tools built around 1.10.0 read the rest (reference §3.6). Both frontends answer it —
ZeroMQ for ``server_config``/``server_status``, HTTP for ``GET /status/server`` — so it is built
here once, as ``{**runtime, **args, **static}`` in 1.10.0's order (the CLI's ``device_map``
overwrites the runtime one, as it did there; the devices in use are under ``devices``).

Keys that described 1.10.0's process topology (``ventilator -> worker`` …) are kept with honest
values for this single-process server.
"""

from __future__ import annotations

import importlib.metadata
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import zmq

from bertserve_api.contract import SERVER_VERSION, ServerConfig

#: A client counts as active if it sent an encode request within this many seconds (as 1.10.0).
ACTIVE_CLIENT_WINDOW_S = 180.0
#: Clients remembered for the per-client statistics (oldest forgotten first).
MAX_TRACKED_CLIENTS = 500
#: Request intervals kept for the interval/rate statistics.
MAX_INTERVALS = 200


#: Distributions that install the ``tensorflow`` package: the GPU image's and the CPU image's.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")


def tensorflow_version() -> list[str]:
    """The installed TensorFlow version as 1.10.0 reported it, a list like ``["2", "21", "0"]``.

    Read from the package metadata, so answering SHOW_CONFIG never imports TensorFlow. The CPU
    image installs the same TensorFlow as the ``tensorflow-cpu`` distribution.
    """
    for distribution in TENSORFLOW_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(distribution).split(".")
        except importlib.metadata.PackageNotFoundError:
            continue
    return []


def _min_max_avg(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {
            f"avg_{name}": 0,
            f"min_{name}": 0,
            f"max_{name}": 0,
            f"num_min_{name}": 0,
            f"num_max_{name}": 0,
        }
    low, high = min(values), max(values)
    return {
        f"avg_{name}": sum(values) / len(values),
        f"min_{name}": low,
        f"max_{name}": high,
        f"num_min_{name}": sum(1 for v in values if v == low),
        f"num_max_{name}": sum(1 for v in values if v == high),
    }


class _CappedCounts:
    """Request counts per client, the last :data:`MAX_TRACKED_CLIENTS` kept by name.

    Like 1.10.0's ``CappedHistogram``: a client pushed out (least recently seen first) still
    counts in the totals, minimum and maximum, so ``num_total_client`` and the
    ``request_per_client`` statistics cover every client ever seen, in bounded memory.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cache: OrderedDict[str, int] = OrderedDict()
        self.evicted = 0
        self.evicted_sum = 0
        self.evicted_min = float("inf")
        self.evicted_min_count = 0
        self.evicted_max = 0
        self.evicted_max_count = 0

    def increment(self, key: str) -> str | None:
        """Count one request of ``key``; the client pushed out, if any."""
        self.cache[key] = self.cache.pop(key, 0) + 1
        if len(self.cache) <= self.capacity:
            return None
        old, value = self.cache.popitem(last=False)
        self.evicted += 1
        self.evicted_sum += value
        if value < self.evicted_min:
            self.evicted_min, self.evicted_min_count = value, 1
        elif value == self.evicted_min:
            self.evicted_min_count += 1
        if value > self.evicted_max:
            self.evicted_max, self.evicted_max_count = value, 1
        elif value == self.evicted_max:
            self.evicted_max_count += 1
        return old

    def total_size(self) -> int:
        return self.evicted + len(self.cache)

    def stat_map(self, name: str) -> dict[str, float]:
        """1.10.0's ``CappedHistogram.get_stat_map``, evicted clients included."""
        counts = list(self.cache.values())
        if not counts:
            return _min_max_avg(name, [])
        avg = (self.evicted_sum + sum(counts)) / (self.evicted + len(counts))
        low, high = min(counts), max(counts)
        num_min = num_max = 0
        low_f: float = low
        if self.evicted_min <= low:
            low_f = self.evicted_min
            num_min += self.evicted_min_count
        if self.evicted_min >= low_f:
            num_min += sum(1 for v in counts if v == low_f)
        high_f: float = high
        if self.evicted_max >= high:
            high_f = self.evicted_max
            num_max += self.evicted_max_count
        if self.evicted_max <= high_f:
            num_max += sum(1 for v in counts if v == high_f)
        return {
            f"avg_{name}": avg,
            f"min_{name}": low_f,
            f"max_{name}": high_f,
            f"num_min_{name}": num_min,
            f"num_max_{name}": num_max,
        }


class ServerStatistic:
    """Request counters behind SHOW_STATUS's ``statistic`` object (1.10.0 key names and formulas).

    As in 1.10.0: ``num_total_client`` counts every client ever seen (not only the last
    :data:`MAX_TRACKED_CLIENTS`), ``avg_size_per_request`` is the mean request size weighted by
    how often each size occurred (``num_total_seq / num_data_request``), while ``min``/``max``/
    ``num_min``/``num_max`` of ``size_per_request`` range over the distinct sizes seen.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._requests_per_client = _CappedCounts(MAX_TRACKED_CLIENTS)
        self._last_active: dict[str, float] = {}
        self._sizes: dict[int, int] = {}
        self._intervals: list[float] = []
        self._num_data = 0
        self._num_sys = 0
        self._num_seq = 0
        self._last_request: float | None = None

    def record(self, client: str, size: int, *, system: bool) -> None:
        """Count one request; ``system`` for SHOW_CONFIG/SHOW_STATUS (not counted as data)."""
        with self._lock:
            evicted = self._requests_per_client.increment(client)
            if evicted is not None:
                self._last_active.pop(evicted, None)
            if system:
                self._num_sys += 1
                return
            now = self._clock()
            self._num_data += 1
            self._num_seq += size
            self._sizes[size] = self._sizes.get(size, 0) + 1
            self._last_active[client] = now
            if self._last_request is not None:
                self._intervals.append(now - self._last_request)
                del self._intervals[:-MAX_INTERVALS]
            self._last_request = now

    def value(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            active = sum(1 for t in self._last_active.values() if now - t <= ACTIVE_CLIENT_WINDOW_S)
            intervals = list(self._intervals)
            out: dict[str, Any] = {
                "num_data_request": self._num_data,
                "num_total_seq": self._num_seq,
                "num_sys_request": self._num_sys,
                "num_total_request": self._num_data + self._num_sys,
                "num_total_client": self._requests_per_client.total_size(),
                "num_active_client": active,
            }
            out.update(self._requests_per_client.stat_map("request_per_client"))
            sizes = _min_max_avg("size_per_request", [float(v) for v in self._sizes])
            if self._sizes:
                sizes["avg_size_per_request"] = sum(k * n for k, n in self._sizes.items()) / sum(
                    self._sizes.values()
                )
            out.update(sizes)
            out.update(_min_max_avg("last_two_interval", intervals))
            out.update(_min_max_avg("request_per_second", [1.0 / v for v in intervals if v > 0]))
            return out


class StatusBook:
    """Builds the SHOW_CONFIG/SHOW_STATUS JSON object for one server."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        devices: Iterable[str] = (),
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.devices = list(devices)
        self.statistic = ServerStatistic()
        self._extra = extra
        self._start_time = str(datetime.now())

    def document(self, client: str, *, with_statistic: bool) -> dict[str, Any]:
        runtime: dict[str, Any] = {
            "client": client,
            "num_process": 1,
            "ventilator -> worker": [],
            "worker -> sink": "",
            "ventilator <-> sink": "",
            "server_current_time": str(datetime.now()),
            "device_map": self.devices,
            "num_concurrent_socket": 2,
        }
        if with_statistic:
            runtime["statistic"] = self.statistic.value()
        static = {
            "tensorflow_version": tensorflow_version(),
            "python_version": sys.version,
            "server_version": SERVER_VERSION,
            "pyzmq_version": zmq.pyzmq_version(),
            "zmq_version": zmq.zmq_version(),
            "server_start_time": self._start_time,
        }
        ours = {"devices": self.devices, **(self._extra() if self._extra else {})}
        return {**runtime, **self.config.show_config(), **static, **ours}
