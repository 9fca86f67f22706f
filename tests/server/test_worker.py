"""Device placement (1.10.0's round-robin rule) and the worker loop's resilience."""

from __future__ import annotations

import numpy as np
import pytest
from fake_encoder import FakeEncoder

from bertserve_api.contract import ServerConfig
from bertserve_server.batcher import Batcher
from bertserve_server.encoder import TokenizedInput
from bertserve_server.errors import EncodeFailed
from bertserve_server.metrics import Metrics
from bertserve_server.worker import DeviceError, Worker, plan_devices


def config(**kw) -> ServerConfig:
    return ServerConfig(model_dir="/m", **kw)


@pytest.mark.parametrize(
    ("flags", "gpus", "devices"),
    [
        ({}, [], ["/CPU:0"]),
        ({"num_worker": 2}, [], ["/CPU:0", "/CPU:0"]),
        ({"cpu": True, "num_worker": 2}, [0, 1], ["/CPU:0", "/CPU:0"]),
        ({}, [0, 1], ["/GPU:0"]),
        ({"num_worker": 2}, [0, 1], ["/GPU:0", "/GPU:1"]),
        ({"num_worker": 3}, [0, 1], ["/GPU:0", "/GPU:1", "/GPU:0"]),
        ({"num_worker": 2, "device_map": (1,)}, [0, 1], ["/GPU:1", "/GPU:1"]),
        ({"num_worker": 3, "device_map": (1, 0)}, [0, 1, 2], ["/GPU:1", "/GPU:0", "/GPU:1"]),
        ({"cpu": True, "device_map": (3,)}, [], ["/CPU:0"]),
    ],
)
def test_plan_devices(flags, gpus, devices):
    assert plan_devices(config(**flags), gpus) == devices


def test_device_map_naming_an_invisible_gpu_is_an_error():
    with pytest.raises(DeviceError, match="visible GPUs are 0, 1; fix -device_map"):
        plan_devices(config(device_map=(0, 4)), [0, 1])
    with pytest.raises(DeviceError, match="none is visible; use -cpu"):
        plan_devices(config(device_map=(0,)), [])


def test_worker_survives_a_failing_batch_and_keeps_serving():
    encoder = FakeEncoder(fail_if=lambda batch: bool((batch.input_ids == 66).any()))
    batcher = Batcher(width=encoder.hidden_size, dtype=encoder.dtype, max_wait_ms=0.0)
    worker = Worker(0, "/CPU:0", encoder, batcher, Metrics())
    worker.start()
    try:
        bad = batcher.reserve(1)
        batcher.enqueue(bad, [TokenizedInput((2, 66, 3), (0, 0, 0), (1, 1, 1), ("[CLS]", "x", "[SEP]"))])
        assert isinstance(bad.future.exception(5), EncodeFailed)
        good = batcher.reserve(1)
        batcher.enqueue(good, [TokenizedInput((2, 7, 3), (0, 0, 0), (1, 1, 1), ("[CLS]", "y", "[SEP]"))])
        assert np.isfinite(good.future.result(5)).all()
    finally:
        worker.stop()
        batcher.stop()
        worker.join(5)
    assert not worker.is_alive()


def test_several_workers_run_batches_concurrently(tmp_path):
    import threading

    from server_harness import RawClient, fake_server, wait_until

    class Counting(FakeEncoder):
        def __init__(self) -> None:
            super().__init__(delay_s=0.3)
            self.lock = threading.Lock()
            self.active = 0
            self.peak = 0

        def encode(self, batch):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                return super().encode(batch)
            finally:
                with self.lock:
                    self.active -= 1

    encoder = Counting()
    with fake_server(tmp_path, encoder=encoder, num_worker=2, max_batch_size=1) as server:
        assert [w.device for w in server.workers] == ["/CPU:0", "/CPU:0"]
        with RawClient(server, b"two") as raw:
            raw.send(b"two", b'["a", "b", "c", "d"]', b"1", b"4")
            assert raw.recv(10000) is not None
        wait_until(lambda: encoder.active == 0)
    assert encoder.peak == 2
