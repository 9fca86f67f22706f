"""Fixtures of the scale-out tests: the tiny random BERT every replica serves, and a log folder.

The model is written by the tests themselves (Google's checkpoint layout, random weights), so the
replicas are real ``bert-serving-start`` processes running the real TensorFlow encoder.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scaleout_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 layers, hidden 32, 4 heads, the synthetic vocabulary, max_position_embeddings 64."""
    from bertserve_server.model.synthetic import write_random_bert

    return write_random_bert(tmp_path_factory.mktemp("scaleout") / "uncased_L-2_H-32_A-4", seed=11)
