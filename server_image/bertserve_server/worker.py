"""Workers: one thread per device slot, each pulling batches from the batcher into a model.

Why it exists: ``-num_worker``, ``-device_map`` and ``-cpu`` decide where the model runs
(reference §5.4: ``((device_map or available GPUs) * num_worker)[:num_worker]``, CPU when there is
no GPU). The placement rule is a pure function (:func:`plan_devices`) so it is testable without
hardware; the loop (:class:`Worker`) only moves batches and never dies on a bad batch: a model
error fails the requests of that batch and the worker takes the next one. Unlike 1.10.0, no GPU
is silently skipped for being busy — a GPU named in ``-device_map`` that is not visible is a
start-up error.

TensorFlow is imported lazily, by :func:`tf_encoder_factory`, from ``bertserve_server.model``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from bertserve_api.contract import ServerConfig
from bertserve_server.batcher import Batcher
from bertserve_server.encoder import CLASSIFY, Encoder
from bertserve_server.errors import EncodeFailed
from bertserve_server.metrics import Metrics

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str], Encoder]
"""Builds the model on a TensorFlow device string (``"/CPU:0"``, ``"/GPU:1"``)."""

CPU_DEVICE = "/CPU:0"


class DeviceError(ValueError):
    """``-device_map`` names GPUs this container cannot see."""


def plan_devices(config: ServerConfig, gpu_ids: Sequence[int]) -> list[str]:
    """The device of each of the ``-num_worker`` workers.

    ``-cpu`` or no visible GPU: every worker on the CPU. Otherwise workers take the GPUs of
    ``-device_map`` (default: every visible GPU) round-robin, as 1.10.0 did.
    """
    if config.cpu or not gpu_ids:
        if config.device_map and not config.cpu:
            raise DeviceError(
                f"-device_map {' '.join(map(str, config.device_map))} names GPUs, but none is visible; "
                "use -cpu to run on the CPU, or give the container a GPU"
            )
        return [CPU_DEVICE] * config.num_worker
    missing = [d for d in config.device_map if d not in gpu_ids]
    if missing:
        raise DeviceError(
            f"-device_map names GPU {', '.join(map(str, missing))}, but the visible GPUs are "
            f"{', '.join(map(str, gpu_ids))}; fix -device_map"
        )
    pool = list(config.device_map) or list(gpu_ids)
    return [f"/GPU:{d}" for d in (pool * config.num_worker)[: config.num_worker]]


def visible_gpu_ids() -> list[int]:
    """GPU ids TensorFlow numbers ``/GPU:0..n-1`` in this process (imports TensorFlow)."""
    from bertserve_server.model import tf_encoder

    return tf_encoder.list_gpu_ids()


def gpu_memory_mb() -> int | None:
    """Total memory of the first GPU in MiB, from ``nvidia-smi`` (None when unavailable)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def tf_encoder_factory(config: ServerConfig, devices: Sequence[str]) -> EncoderFactory:
    """A factory for the real TensorFlow encoder, configured from the server flags.

    ``-gpu_memory_fraction`` becomes a per-GPU memory cap of fraction × card memory × workers on
    that GPU (1.10.0 applied the fraction per worker process; here workers share one process).
    """
    from bertserve_server.model import tf_encoder

    gpu_workers = max((devices.count(d) for d in devices if "GPU" in d), default=0)
    limit_mb = None
    if gpu_workers and config.gpu_memory_fraction < 1.0:
        total = gpu_memory_mb()
        if total:
            limit_mb = int(total * min(1.0, config.gpu_memory_fraction * gpu_workers))
    tf_encoder.configure_runtime(gpu_memory_limit_mb=limit_mb)
    shared: dict[str, Encoder] = {}

    def build(device: str) -> Encoder:
        # Workers on the same device share one model: same weights, one copy in memory.
        if device not in shared:
            shared[device] = tf_encoder.TFEncoder(
                config.model_dir,
                tuned_model_dir=config.tuned_model_dir,
                ckpt_name=config.ckpt_name,
                config_name=config.config_name,
                pooling_strategy=config.pooling_strategy.name,
                pooling_layer=config.pooling_layer,
                fp16=config.fp16,
                xla=config.xla,
                size_classes=False if config.no_size_classes else None,
                device=device,
                no_position_embeddings=config.no_position_embeddings,
                classifier=config.classifier,
            )
        return shared[device]

    return build


class Worker(threading.Thread):
    """Moves batches from the batcher through one encoder until stopped."""

    def __init__(self, index: int, device: str, encoder: Encoder, batcher: Batcher, metrics: Metrics) -> None:
        super().__init__(name=f"worker-{index}-{device.strip('/').replace(':', '')}", daemon=True)
        self.index = index
        self.device = device
        self.encoder = encoder
        self.batcher = batcher
        self.metrics = metrics
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set() and not self.batcher.stopped:
            device_batch = self.batcher.next_batch(timeout=0.1)
            if device_batch is None:
                continue
            started = time.perf_counter()
            try:
                if device_batch.task == CLASSIFY:
                    embeddings = self.encoder.classify(device_batch.batch)
                else:
                    embeddings = self.encoder.encode(device_batch.batch)
            except Exception as exc:
                logger.exception(
                    "worker %d (%s) failed on a batch of %d x %d",
                    self.index,
                    self.device,
                    device_batch.batch.size,
                    device_batch.batch.seq_len,
                )
                self.batcher.fail(device_batch, EncodeFailed(f"model error: {type(exc).__name__}: {exc}"))
                continue
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.batcher.complete(device_batch, embeddings)


def build_encoders(factory: EncoderFactory, devices: Sequence[str]) -> list[Encoder]:
    """One encoder per worker (the factory may hand the same object to workers on one device)."""
    encoders = []
    for index, device in enumerate(devices):
        logger.info("worker %d: loading the model on %s", index, device)
        encoders.append(factory(device))
    return encoders


def distinct_encoders(encoders: Sequence[Encoder]) -> list[Encoder]:
    """Each encoder once, in order: workers on one device may share one encoder object."""
    return list({id(e): e for e in encoders}.values())


def prepare_large_calls(encoders: Sequence[Encoder], cancel: threading.Event) -> threading.Thread | None:
    """Build the large-call function of each distinct encoder that has size classes, in the background.

    Why after ready, not in the warm-up: it doubles the trace and warm-up (BERT-base: about 7 s
    on 2 cores), and until it is done large calls are merely slower, not wrong (see
    ``TFEncoder.prepare_large_calls``). Encoders without the method (fakes, other backends) are
    skipped. ``cancel`` stops the build at its next step (a shutdown sets it). Returns the
    thread, or None when there is nothing to build. The thread is not a daemon: the interpreter
    must never finalize while it runs inside TensorFlow, which aborts the process (SIGABRT);
    ``BertServer.shutdown`` cancels and joins it.
    """
    builders = [
        prepare
        for e in distinct_encoders(encoders)
        if getattr(e, "size_classes", False) and callable(prepare := getattr(e, "prepare_large_calls", None))
    ]
    if not builders:
        return None

    def build() -> None:
        for prepare in builders:
            if cancel.is_set():
                return
            try:
                prepare(cancel)
            except Exception:  # serving goes on with the small-call function
                logger.exception(
                    "building the large-call function failed; every call keeps the small-call one"
                )

    thread = threading.Thread(target=build, name="large-calls")
    thread.start()
    return thread


def warm_up(encoders: Sequence[Encoder]) -> None:
    """Run each distinct encoder once on representative shapes."""
    for encoder in distinct_encoders(encoders):
        started = time.perf_counter()
        encoder.warm_up()
        logger.info("warm-up done in %.2fs", time.perf_counter() - started)
