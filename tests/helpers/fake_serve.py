"""``bert-serving-start`` with the numpy fake model: ``python fake_serve.py DELAY_S ARGS...``.

For lifecycle tests that need work to stay in flight (each device batch sleeps ``DELAY_S``)
while exercising the real process: argument parsing, validation, signal handling and drain of
``bertserve_server.app.serve``. Everything but the model is the production code path.

``FAKE_SERVE_LOAD_S`` (environment): the model takes that long to load, after logging
``fake model: loading`` (so a test can act while the server is loading, on an observed event).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from fake_encoder import FakeEncoder

from bertserve_api.contract import parse_argv
from bertserve_server.app import serve
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

    def load(device: str) -> FakeEncoder:
        if load_s:
            logging.getLogger("fake_serve").info("fake model: loading for %.1fs", load_s)
            time.sleep(load_s)
        return encoder

    return serve(config, encoder_factory=load)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
