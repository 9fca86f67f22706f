"""Session-wide safety net for ZeroMQ contexts a test forgot to close.

A context collected by the garbage collector while one of its sockets is still open blocks in
``zmq_ctx_term`` for ever: the collector clears the context's weak references to its sockets
before it runs the finalizer, so ``Context.destroy`` no longer sees them. pytest collects garbage
once more after the session, where no per-test timeout applies, so one leaked subscriber would
hang the whole run. Here every context still open when the session ends is closed with linger 0,
and the run fails, naming the sockets, so the leaking test gets fixed.

pyzmq's own zero-copy garbage collector keeps a context with a bound PULL socket for the life of
the process (started by the first send above 64 KiB, stopped by pyzmq at exit). It is not a leak,
and destroying it would kill that thread mid-``recv``, so it is left alone.
"""

from __future__ import annotations

import gc

import pytest


@pytest.hookimpl(trylast=True)  # after the session-scoped fixtures are torn down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        import zmq
    except ImportError:  # a checkout without the server extra
        return
    from zmq.utils.garbage import gc as zero_copy_collector

    pyzmq_own = zero_copy_collector._context
    leaked = []
    for obj in gc.get_objects():
        if isinstance(obj, zmq.Context) and not obj.closed and obj is not pyzmq_own:
            sockets = [s for s in list(getattr(obj, "_sockets", None) or []) if not s.closed]
            if sockets:
                leaked.append(f"{obj!r}: {[s.get(zmq.LAST_ENDPOINT) for s in sockets]}")
            obj.destroy(linger=0)
    if leaked:
        print("\nZeroMQ contexts left open by tests (closed now):\n  " + "\n  ".join(leaked))
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
