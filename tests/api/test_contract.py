"""The server flag contract: every flag round-trips, spelling and defaults match 1.10.0."""

from __future__ import annotations

import dataclasses

import pytest

from bertserve_api import contract
from bertserve_api.contract import FLAGS, PoolingStrategy, ServerConfig, parse_argv, to_argv

# bert-as-service 1.10.0 flags and defaults (reference: helper.get_args_parser).
CLASSIC_DEFAULTS = {
    "model_dir": None,
    "tuned_model_dir": None,
    "ckpt_name": "bert_model.ckpt",
    "config_name": "bert_config.json",
    "graph_tmp_dir": None,
    "max_seq_len": 25,
    "cased_tokenization": True,  # dest do_lower_case
    "pooling_layer": (-2,),
    "pooling_strategy": PoolingStrategy.REDUCE_MEAN,
    "mask_cls_sep": False,
    "no_special_token": False,
    "show_tokens_to_client": False,
    "no_position_embeddings": False,
    "num_worker": 1,
    "max_batch_size": 256,
    "priority_batch_size": 16,
    "port": 5555,
    "port_out": 5556,
    "http_port": None,
    "http_max_connect": 10,
    "cors": "*",
    "fp16": False,
    "xla": False,
    "cpu": False,
    "gpu_memory_fraction": 0.5,
    "device_map": (),
    "prefetch_size": 10,
    "fixed_embed_length": False,
    "verbose": False,
}

# A non-default value for every flag, to prove each one survives config -> argv -> parse.
NON_DEFAULT = {
    "tuned_model_dir": "/models/mrpc_output",
    "ckpt_name": "model.ckpt-343",
    "config_name": "cfg.json",
    "graph_tmp_dir": "/tmp/graphs",
    "max_seq_len": None,
    "do_lower_case": False,
    "pooling_layer": (-1, -4),
    "pooling_strategy": PoolingStrategy.CLS_POOLED,
    "mask_cls_sep": True,
    "no_special_token": True,
    "show_tokens_to_client": True,
    "no_position_embeddings": True,
    "num_worker": 3,
    "max_batch_size": 64,
    "priority_batch_size": 4,
    "port": 6000,
    "port_out": 6001,
    "http_port": 8125,
    "http_max_connect": 50,
    "cors": "https://a.example",
    "fp16": True,
    "xla": True,
    "no_size_classes": True,
    "cpu": True,
    "gpu_memory_fraction": 0.25,
    "device_map": (0, 2),
    "prefetch_size": 3,
    "fixed_embed_length": True,
    "verbose": True,
    "bind_host": "127.0.0.1",
    "max_queue_size": 99,
    "max_queued_tokens": 4321,
    "max_wait_ms": 7.5,
    "drain_timeout": 3.0,
    "enable_termination": True,
    "peer_service": "mrpc-peers.ml.svc",
    "peer_port": 7000,
    "peer_key_file": "/var/run/bertserve/peer-key/peer.key",
    "log_format": "json",
    "min_identity_len": 32,
    "max_request_bytes": 1048576,
    "max_response_bytes": 134217728,
    "heartbeat_timeout": 2.5,
    "protect_metrics": True,
    "classifier": True,
    "classifier_labels": ("not_paraphrase", "paraphrase"),
}


def test_every_classic_flag_is_declared_with_its_1_10_0_default():
    names = {flag.name: flag for flag in FLAGS}
    for name, default in CLASSIC_DEFAULTS.items():
        assert name in names, f"-{name} missing"
        flag = names[name]
        assert flag.classic
        if name != "model_dir":
            assert contract.DEFAULTS[flag.dest] == default, name
    assert names["model_dir"].required
    assert names["cased_tokenization"].dest == "do_lower_case"


def test_non_default_table_covers_every_flag():
    dests = {flag.dest for flag in FLAGS} - {"model_dir"}
    assert dests == set(NON_DEFAULT)


@pytest.mark.parametrize("dest", sorted(NON_DEFAULT))
def test_each_flag_round_trips(dest):
    config = ServerConfig(model_dir="/models/bert").with_changes(**{dest: NON_DEFAULT[dest]})
    argv = to_argv(config)
    assert parse_argv(argv) == config
    assert getattr(parse_argv(argv), dest) == NON_DEFAULT[dest]


def test_all_flags_changed_at_once_round_trip():
    config = ServerConfig(model_dir="/m", **NON_DEFAULT)
    assert parse_argv(to_argv(config)) == config
    assert parse_argv(to_argv(config, only_changed=False)) == config


def test_default_config_renders_only_model_dir():
    assert to_argv(ServerConfig(model_dir="/m")) == ["-model_dir=/m"]


def test_classic_spellings_and_aliases_parse():
    config = parse_argv(
        [
            "-model_dir",
            "/m",
            "-port_in",
            "7000",
            "-port_result",
            "7001",
            "-max_seq_len",
            "none",
            "-pooling_strategy",
            "cls_token",
            "-pooling_layer",
            "-1",
            "-2",
            "-cased_tokenization",
        ]
    )
    assert (config.port, config.port_out, config.max_seq_len) == (7000, 7001, None)
    assert config.pooling_strategy is PoolingStrategy.FIRST_TOKEN
    assert config.pooling_layer == (-1, -2)
    assert config.do_lower_case is False


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["-model_dir=/m", "-max_seq_len=3"], "must be >3"),
        (["-model_dir=/m", "-max_seq_len=abc"], "not an integer or NONE"),
        (["-model_dir=/m", "-pooling_strategy=AVG"], "unknown pooling strategy"),
        ([], "-model_dir"),
    ],
)
def test_bad_flags_are_rejected_naming_the_problem(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_argv(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_version_flag_prints_1_10_0(capsys):
    with pytest.raises(SystemExit):
        parse_argv(["-version"])
    assert "1.10.0" in capsys.readouterr().out


def test_show_config_sends_pooling_strategy_as_int_and_lists():
    shown = ServerConfig(model_dir="/m", pooling_strategy=PoolingStrategy.LAST_TOKEN).show_config()
    assert shown["pooling_strategy"] == 5
    assert shown["pooling_layer"] == [-2]
    assert shown["do_lower_case"] is True
    assert set(shown) == {f.dest for f in FLAGS}


def test_config_fields_and_flags_agree():
    field_names = {f.name for f in dataclasses.fields(ServerConfig)} - {"_extra"}
    assert field_names == {flag.dest for flag in FLAGS}


def test_classifier_labels_are_comma_separated_and_stripped():
    config = parse_argv(["-model_dir=/m", "-classifier", "-classifier_labels", "no, yes"])
    assert config.classifier is True
    assert config.classifier_labels == ("no", "yes")
    assert to_argv(config) == ["-model_dir=/m", "-classifier", "-classifier_labels=no,yes"]
    assert parse_argv(["-model_dir=/m"]).classifier_labels == ()
    assert ServerConfig(model_dir="/m", classifier_labels=("a", "b")).show_config()["classifier_labels"] == [
        "a",
        "b",
    ]
