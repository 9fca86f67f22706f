"""The pure parts of ``bench_ready``: the report's verdicts and rows, and reading an older server's log.

No server starts here: the starts are made up, so every number the report prints can be checked
against the start it came from.
"""

from __future__ import annotations

from pathlib import Path

from bench_ready import Start, _logged_warm_up, report


def _start(total: float, cpu: float, **phases: float) -> Start:
    return Start(wall=total + 0.01, cpu=cpu, load=3.0, phases={**phases, "total": total})


def test_report_states_each_checkout_against_the_target_with_every_start() -> None:
    phases = {"import": 2.0, "load": 0.3, "trace": 0.5, "warmup": 0.6}
    results = {
        "minilm": {
            "baseline abc1234": (Start(wall=9.0, cpu=6.0, load=5.0), [Start(wall=7.5, cpu=6.1, load=5.0)]),
            "this checkout def5678": (
                _start(5.5, 3.9, **phases),
                [_start(4.2, 3.5, **phases), _start(4.8, 3.6, **phases)],
            ),
        }
    }
    text = report(results, load_before=4.5)
    assert "Load average (1 min) before the run: 4.50" in text
    assert (
        "- baseline abc1234: fastest warm start 7.50 s, median 7.50 s of 1, least CPU 6.1 s; target ≤ 5 s: missed by 2.50 s."
        in text
    )
    assert (
        "- this checkout def5678: fastest warm start 4.20 s, median 4.50 s of 2, least CPU 3.5 s; target ≤ 5 s: met."
        in text
    )
    assert (
        "| baseline abc1234: warm 1 | – | – | – | – | 7.50 | 7.50 | 6.1 | 5.00 |" in text
    )  # no phases exported
    assert "| this checkout def5678: warm 2 | 2.00 | 0.30 | 0.50 | 0.60 | 4.80 | 4.81 | 3.6 | 3.00 |" in text


def test_an_older_servers_warm_up_is_read_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("I:MainThread:[bertserve_server.worker]: warm-up done in 1.80s\n")
    assert _logged_warm_up(log) == {"warmup": 1.8}
    log.write_text("nothing here\n")
    assert _logged_warm_up(log) == {}
