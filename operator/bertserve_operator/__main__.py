"""``python -m bertserve_operator``: run the operator (kopf) with our settings.

Why it exists: one entry point for the image (``bertserve-operator``), local runs and tests, so
every setting means the same everywhere: the chart passes them as ``BERTSERVE_*`` variables
(``extraEnv`` included), a local run may use flags. Settings are read here, once, from the
command line and ``BERTSERVE_*`` variables; kopf gets the namespaces,
the liveness endpoint and standalone mode (one active instance: the chart runs a single replica
with the ``Recreate`` strategy, so there is no peering to configure). SIGTERM/SIGINT stop kopf
gracefully: watches close, running handlers finish, then the runtime drains its workers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import kopf

from bertserve_operator import handlers
from bertserve_operator.settings import Settings, load

LOG_FORMATS = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


def run(settings: Settings) -> None:
    kopf.configure(verbose=settings.verbose, log_format=LOG_FORMATS[settings.log_format])
    logging.getLogger(handlers.__name__).debug("handlers loaded from %s", handlers.__file__)
    kopf.run(
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        # The runtime serves the liveness endpoint itself, with /metrics next to it.
        liveness_endpoint=None,
        memo=kopf.Memo(settings=settings, serve_health=bool(settings.liveness_endpoint)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(sys.argv[1:] if argv is None else argv, os.environ)
    except ValueError as exc:
        print(f"bertserve-operator: {exc}", file=sys.stderr)
        return 2
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
