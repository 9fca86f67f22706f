"""parse_spec: defaults, the seed's MRPC case, and errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from bertserve_api.contract import PoolingStrategy
from bertserve_api.spec import BertServerSpec, SpecError, parse_spec

MRPC = {
    "model": {
        "source": {"pvc": {"claimName": "bert-models"}},
        "pretrainedPath": "uncased_L-12_H-768_A-12",
        "tunedModelDir": "mrpc_output/",
        "ckptName": "model.ckpt-343",
    }
}


def test_mrpc_seed_spec_gets_1_10_0_serving_defaults():
    spec = parse_spec(MRPC)
    assert spec.model.pretrained_path == "uncased_L-12_H-768_A-12"
    assert spec.model.tuned_model_dir == "mrpc_output"
    assert spec.model.ckpt_name == "model.ckpt-343"
    assert spec.model.source.kind == "pvc" and spec.model.source.pvc is not None
    assert spec.model.source.pvc.read_only is True
    s = spec.serving
    assert (s.max_seq_len, s.pooling_strategy, s.pooling_layer, s.max_batch_size) == (
        25,
        PoolingStrategy.REDUCE_MEAN,
        (-2,),
        256,
    )
    assert spec.resources.gpus == 1 and spec.workers == 1
    assert (spec.rollout.max_surge, spec.rollout.max_unavailable) == (0, 1)


def test_spec_is_immutable():
    spec = parse_spec(MRPC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.replicas = 3  # type: ignore[misc]
    assert isinstance(spec, BertServerSpec)


def test_max_seq_len_null_means_dynamic_length():
    assert parse_spec({**MRPC, "serving": {"maxSeqLen": None}}).serving.max_seq_len is None


def test_pooling_aliases_are_accepted():
    spec = parse_spec({**MRPC, "serving": {"poolingStrategy": "SEP_TOKEN"}})
    assert spec.serving.pooling_strategy is PoolingStrategy.LAST_TOKEN


def test_workers_default_to_one_per_gpu():
    assert parse_spec({**MRPC, "resources": {"gpus": 4}}).workers == 4
    assert parse_spec({**MRPC, "resources": {"gpus": 0}}).workers == 1


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"serving": {"maxSeqLen": 1024}}, "spec.serving.maxSeqLen: 1024 exceeds 512"),
        (
            {"model": {**MRPC["model"], "ckptName": "out/model.ckpt-1"}},
            "spec.model.ckptName: must be a checkpoint prefix, not a path",
        ),
        ({"serving": {"poolingLayer": []}}, "spec.serving.poolingLayer: must be a non-empty list"),
        ({"serving": {"poolingLayer": [-1, "x"]}}, "spec.serving.poolingLayer[1]: must be an integer"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory: 'lots' is not a Kubernetes quantity"),
        ({"tolerations": [{"operator": "Maybe"}]}, "spec.tolerations[0].operator: must be Equal or Exists"),
        ({"serving": {"numWorker": 3}, "resources": {"gpus": 2}}, "spec.serving.numWorker: 3 workers need"),
        (
            {"model": {**MRPC["model"], "source": {"uri": {"url": "https://x/m.zip", "sha256": "abc"}}}},
            "spec.model.source.uri.sha256: must be 64 hexadecimal characters",
        ),
        (
            {"serviceAccountName": "Bad_Name"},
            "spec.serviceAccountName: 'Bad_Name' is not a valid object name",
        ),
        ({"serving": {"maxQueueSize": 8}}, "spec.serving.maxQueueSize: 8 is smaller than maxBatchSize 256"),
        (
            {"service": {"type": "ExternalName"}},
            "spec.service.type: must be one of ClusterIP, NodePort, LoadBalancer, got 'ExternalName'",
        ),
        ({"service": {"annotations": {"a": 1}}}, "spec.service.annotations: must be a map of strings"),
        ({"monitoring": {"prometheusAnnotations": "yes"}}, "spec.monitoring.prometheusAnnotations: must be"),
        ({"monitoring": {"scrape": True}}, "spec.monitoring.scrape: unknown field"),
        (
            {"serving": {"classifier": {"enabled": True, "labels": ["yes", "no", "yes"]}}},
            "spec.serving.classifier.labels: names yes more than once",
        ),
        (
            {"serving": {"classifier": {"enabled": True, "labels": ["a", "b,c"]}}},
            "spec.serving.classifier.labels[1]: 'b,c' must not contain commas",
        ),
        (
            {"serving": {"classifier": {"labels": []}}},
            "spec.serving.classifier.labels: must be a non-empty list",
        ),
        ({"serving": {"classifier": {"on": True}}}, "spec.serving.classifier.on: unknown field"),
    ],
)
def test_errors_name_the_field_and_the_fix(patch, message):
    with pytest.raises(SpecError) as exc:
        parse_spec({**MRPC, **patch})
    assert str(exc.value).startswith(message)


def test_error_carries_path_and_message_separately():
    with pytest.raises(SpecError) as exc:
        parse_spec({**MRPC, "replicas": -1})
    assert exc.value.path == "spec.replicas"
    assert "minimum 0" in exc.value.message


def test_missing_model_is_reported():
    with pytest.raises(SpecError, match=r"^spec\.model: is required"):
        parse_spec({})
