"""The client-facing edges of a server: the classic ZeroMQ protocol (:mod:`.zmq`) and HTTP (:mod:`.http`).

Both reach the model only through :class:`bertserve_server.service.EncodeService` (and its
batcher); the import-linter contract in ``pyproject.toml`` keeps it that way.
"""
