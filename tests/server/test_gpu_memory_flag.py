"""``-gpu_memory_fraction`` does what its help says: a hard per-GPU cap, growth only without one.

No GPU here, so ``nvidia-smi`` is a script on ``PATH`` that prints a card's memory (what the real
one prints for ``--query-gpu=memory.total --format=csv,noheader,nounits``), and TensorFlow's
runtime set-up is replaced by a recorder: what is checked is the cap the server computes and
hands to TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bertserve_server.model
from bertserve_api.contract import FLAGS, ServerConfig
from bertserve_server import worker

CARD_MB = 81559


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {CARD_MB}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    calls: list[dict[str, Any]] = []
    fake = SimpleNamespace(configure_runtime=lambda **kw: calls.append(kw), TFEncoder=None)
    monkeypatch.setattr(bertserve_server.model, "tf_encoder", fake, raising=False)
    return calls


def _config(fraction: float) -> ServerConfig:
    return ServerConfig(model_dir="/m", gpu_memory_fraction=fraction)


def test_help_says_hard_cap_not_memory_growth() -> None:
    (flag,) = [f for f in FLAGS if f.name == "gpu_memory_fraction"]
    assert "hard cap" in flag.help and "memory growth stays on" not in flag.help


def test_fraction_becomes_a_cap_of_fraction_times_card_times_workers(recorded) -> None:
    worker.tf_encoder_factory(_config(0.3), ["/GPU:0", "/GPU:0", "/GPU:1", "/GPU:1"])
    assert recorded == [{"gpu_memory_limit_mb": int(CARD_MB * 0.6)}]


def test_full_fraction_means_no_cap(recorded) -> None:
    worker.tf_encoder_factory(_config(1.0), ["/GPU:0"])
    assert recorded == [{"gpu_memory_limit_mb": None}]


def test_cpu_workers_get_no_cap(recorded) -> None:
    worker.tf_encoder_factory(_config(0.5), ["/CPU:0"])
    assert recorded == [{"gpu_memory_limit_mb": None}]
