"""``bert-serving-start``'s front door: 1.10.0 banner, one-line configuration errors before TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from ports import free_port
from server_harness import write_model_dir

from bertserve_api.contract import parse_argv
from bertserve_server.cli import EXIT_CONFIG_ERROR, banner, main, terminate


def touch_checkpoint(directory: Path, prefix: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{prefix}.index").write_bytes(b"")
    (directory / f"{prefix}.data-00000-of-00001").write_bytes(b"")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = write_model_dir(tmp_path / "uncased_L-2_H-8_A-2", max_position_embeddings=64, layers=2)
    touch_checkpoint(directory, "bert_model.ckpt")
    return directory


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("bert-serving-start: error: ")
    return lines[0]


def test_banner_matches_the_1_10_0_layout(model_dir):
    argv = [f"-model_dir={model_dir}", "-pooling_strategy", "CLS_TOKEN", "-device_map", "0", "1"]
    text = banner(parse_argv(argv), argv).splitlines()
    assert text[0] == f"usage: bert-serving-start {' '.join(argv)}"
    assert text[1] == "                 ARG   VALUE"
    assert text[2] == "_" * 50
    rows = text[3:-1] if text[-1] == "" else text[3:]
    keys = [row.split(" = ")[0].strip() for row in rows]
    assert keys == sorted(keys)
    assert "    pooling_strategy = FIRST_TOKEN" in rows
    assert "          device_map = [0, 1]" in rows
    assert "       do_lower_case = True" in rows


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "bert-serving-start 1.10.0"


def test_missing_model_dir_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "-model_dir" in capsys.readouterr().err


def test_model_dir_that_does_not_exist(capsys, tmp_path):
    code, _, err = run_main(capsys, [f"-model_dir={tmp_path / 'nope'}"])
    assert code == EXIT_CONFIG_ERROR
    assert "-model_dir" in error_line(err) and "is not a directory" in err


def test_model_dir_without_bert_config(capsys, model_dir):
    (model_dir / "bert_config.json").unlink()
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}"])
    line = error_line(err)
    assert code == EXIT_CONFIG_ERROR and "has no bert_config.json" in line and "-tuned_model_dir" in line


def test_model_dir_without_vocab(capsys, model_dir):
    (model_dir / "vocab.txt").unlink()
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}"])
    assert code == EXIT_CONFIG_ERROR and "has no vocab.txt" in error_line(err)


def test_unreadable_config_names_config_name(capsys, model_dir):
    (model_dir / "bert_config.json").write_text("{not json")
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}"])
    assert code == EXIT_CONFIG_ERROR and error_line(err).startswith("bert-serving-start: error: -config_name")


def test_checkpoint_prefix_that_does_not_exist_lists_the_ones_that_do(capsys, model_dir, tmp_path):
    tuned = tmp_path / "mrpc_output"
    for step in (0, 343, 1000):
        touch_checkpoint(tuned, f"model.ckpt-{step}")
    code, _, err = run_main(
        capsys, [f"-model_dir={model_dir}", f"-tuned_model_dir={tuned}", "-ckpt_name=model.ckpt-34"]
    )
    line = error_line(err)
    assert code == EXIT_CONFIG_ERROR and line.startswith("bert-serving-start: error: -ckpt_name")
    assert "model.ckpt-0, model.ckpt-343, model.ckpt-1000" in line and "set -ckpt_name" in line


def test_tuned_dir_with_the_default_ckpt_name_explains_the_fix(capsys, model_dir, tmp_path):
    tuned = tmp_path / "mrpc_output"
    touch_checkpoint(tuned, "model.ckpt-343")
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}", f"-tuned_model_dir={tuned}"])
    line = error_line(err)
    assert code == EXIT_CONFIG_ERROR and "bert_model.ckpt" in line and "model.ckpt-343" in line


def test_ckpt_name_given_as_a_file_name(capsys, model_dir):
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}", "-ckpt_name=bert_model.ckpt.index"])
    assert code == EXIT_CONFIG_ERROR and "without .index" in error_line(err)


def test_tuned_model_dir_that_does_not_exist(capsys, model_dir, tmp_path):
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}", f"-tuned_model_dir={tmp_path / 'missing'}"])
    assert code == EXIT_CONFIG_ERROR and "-tuned_model_dir" in error_line(err)


def test_max_seq_len_above_max_position_embeddings(capsys, model_dir):
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}", "-max_seq_len=65"])
    line = error_line(err)
    assert code == EXIT_CONFIG_ERROR
    assert "-max_seq_len 65 exceeds max_position_embeddings=64" in line and "or NONE" in line


def test_max_seq_len_at_the_limit_and_none_pass_validation(model_dir):
    from bertserve_server.cli import validate

    validate(parse_argv([f"-model_dir={model_dir}", "-max_seq_len=64"]))
    validate(parse_argv([f"-model_dir={model_dir}", "-max_seq_len=NONE"]))


@pytest.mark.parametrize("layer", ["2", "-3"])
def test_pooling_layer_out_of_range(capsys, model_dir, layer):
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}", "-pooling_layer", "-1", layer])
    line = error_line(err)
    assert code == EXIT_CONFIG_ERROR and f"-pooling_layer {layer} is out of range" in line and "-2..1" in line


def test_cls_pooled_ignores_pooling_layer_as_1_10_0_did(model_dir):
    from bertserve_server.cli import validate

    validate(parse_argv([f"-model_dir={model_dir}", "-pooling_strategy=CLS_POOLED", "-pooling_layer=-7"]))


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["-port=6000", "-port_out=6000"], "-port_out and -port are both 6000"),
        (["-num_worker=0"], "-num_worker must be at least 1"),
        (["-gpu_memory_fraction=1.5"], "-gpu_memory_fraction must be in (0, 1]"),
        (["-log_format=xml"], "-log_format must be text or json"),
        (["-device_map", "-1"], "-device_map takes GPU ids"),
        (["-classifier_labels=a,b"], "-classifier_labels names the head's labels; it needs -classifier"),
        (["-classifier", "-classifier_labels=a,,b"], "-classifier_labels has an empty label"),
        (["-classifier", "-classifier_labels=yes,no,yes"], "-classifier_labels names yes more than once"),
        (["-classifier", "-classifier_labels=" + ",".join(map(str, range(65)))], "at most 64"),
    ],
)
def test_impossible_numbers(capsys, model_dir, extra, fragment):
    code, _, err = run_main(capsys, [f"-model_dir={model_dir}", *extra])
    assert code == EXIT_CONFIG_ERROR and fragment in error_line(err)


def test_configuration_errors_come_before_tensorflow_is_imported(model_dir):
    code = (
        "import sys\n"
        "from bertserve_server.cli import main\n"
        f"rc = main(['-model_dir={model_dir}', '-max_seq_len=600'])\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_CONFIG_ERROR
    assert out.stdout.strip().endswith("NO_TF")
    assert "max_position_embeddings=64" in out.stderr


def test_console_script_reports_errors_the_same_way(model_dir):
    script = Path(sys.executable).with_name("bert-serving-start")
    out = subprocess.run(
        [str(script), f"-model_dir={model_dir}", "-ckpt_name=nope"], capture_output=True, text=True
    )
    assert out.returncode == EXIT_CONFIG_ERROR
    assert "available: bert_model.ckpt" in out.stderr and "ARG   VALUE" in out.stdout


def test_terminate_sends_the_1_10_0_frames():
    port = free_port()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(f"tcp://127.0.0.1:{port}")
    try:
        assert terminate(["-ip", "127.0.0.1", "-port", str(port), "-timeout", "2000"]) == 0
        assert pull.poll(5000)
        assert pull.recv_multipart() == [b"0", b"TERMINATION", b"0", b"0"]
    finally:
        pull.close()
        context.term()


def test_json_log_format_writes_one_object_per_line(capsys, model_dir):
    import json
    import logging

    from bertserve_server.cli import setup_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging(parse_argv([f"-model_dir={model_dir}", "-log_format=json"]))
        logging.getLogger("bertserve_server.test").warning("queue is %s", "full")
        entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert entry["level"] == "WARNING" and entry["message"] == "queue is full"
        assert entry["logger"] == "bertserve_server.test"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
