"""``make demo`` works as a new user runs it: Ready BertServer, sensible similarities, clean stop."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.tf]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _demo_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    marker = str(ROOT / ".local" / "demo")
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def test_demo_reaches_ready_encodes_and_stops_everything():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.run(
        [sys.executable, "hack/demo.py", "up"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
    )
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        out = up.stdout
        # Ready on a simulated GPU node, with the seed's three paths, through the chart's operator.
        assert "mrpc   True    Available   1/1        1" in out
        assert "gpu-node-" in out
        assert "checkpoint (override by the fine-tuned model):" in out
        assert "-ckpt_name=model.ckpt-343" in out
        assert "paraphrases are closer than unrelated pairs" in out
        # The fine-tuned head at /predict: rendered flags, the labels in status, probabilities.
        assert "-classifier -classifier_labels=not_paraphrase,paraphrase" in out
        assert "status.classifierLabels): not_paraphrase, paraphrase" in out
        assert "POST /predict with sentence pairs" in out and "S1/S2" in out and "S3/S4" in out
        assert "is random, not\n    trained on MRPC" in out
    finally:
        down = subprocess.run(
            [sys.executable, "hack/demo.py", "down"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    assert down.returncode == 0, down.stderr
    assert _demo_processes() == []
