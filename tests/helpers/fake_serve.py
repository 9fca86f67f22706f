"""``bert-serving-start`` with the numpy fake model: ``python fake_serve.py DELAY_S ARGS...``.

For lifecycle tests that need work to stay in flight (each device batch sleeps ``DELAY_S``)
while exercising the real process: argument parsing, validation, signal handling and drain of
``bertserve_server.app.serve``. Everything but the model is the production code path.

``FAKE_SERVE_LOAD_S`` (environment): the model takes that long to load, after logging
``fake model: loading`` (so a test can act while the server is loading, on an observed event).

``FAKE_SERVE_LARGE_CALLS_S``: the model has size classes, and building its large-call function
(what the server runs in the background once ready) takes that long, in 50 ms steps that stop
early when the server cancels the build; it logs ``fake large calls: building``, then
``fake large calls: built`` or ``fake large calls: cancelled``.

``FAKE_SERVE_SIGTERM_AT_READY=1``: the process sends itself SIGTERM from inside start-up, the
moment it logs that it is ready (the earliest a kubelet can act on a passing readiness probe),
so the signal reliably lands in the last steps of ``BertServer.start``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from fake_encoder import FakeEncoder

from bertserve_api.contract import parse_argv
from bertserve_server.app import READY_LOG_LINE, serve
from bertserve_server.cli import setup_logging, validate


def main(argv: list[str]) -> int:
    delay = float(argv[0])
    config = parse_argv(argv[1:])
    bert = validate(config)
    setup_logging(config)
    encoder = FakeEncoder(
        pooling_strategy=config.pooling_strategy.name,
        pooling_layer=config.pooling_layer,
        max_position_embeddings=bert.max_position_embeddings,
        delay_s=delay,
    )
    load_s = float(os.environ.get("FAKE_SERVE_LOAD_S", "0"))
    large_calls_s = float(os.environ.get("FAKE_SERVE_LARGE_CALLS_S", "0"))
    if large_calls_s:
        encoder.size_classes = True
        encoder.prepare_large_calls = lambda cancel=None: _build_large_calls(large_calls_s, cancel)
    if os.environ.get("FAKE_SERVE_SIGTERM_AT_READY") == "1":
        logging.getLogger().addHandler(_SigtermAtReady())

    def load(device: str) -> FakeEncoder:
        if load_s:
            logging.getLogger("fake_serve").info("fake model: loading for %.1fs", load_s)
            time.sleep(load_s)
        return encoder

    return serve(config, encoder_factory=load)


def _build_large_calls(seconds: float, cancel: threading.Event | None) -> float:
    log = logging.getLogger("fake_serve")
    log.info("fake large calls: building for %.1fs", seconds)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            log.info("fake large calls: cancelled")
            return 0.0
        time.sleep(0.05)
    log.info("fake large calls: built")
    return seconds


class _SigtermAtReady(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == READY_LOG_LINE:
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
