"""The user guide's sizing table quotes the measurements and sizes the examples by it.

Why it exists: bold figures in the table are measurements (``benchmarks/bench_sizing.py``); they
must be the numbers in ``benchmarks/results/sizing.md``, and the examples' memory and claim sizes
must be the table's, so changing one without the other fails here.
"""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "user-guide.md").read_text()
RESULTS = (ROOT / "benchmarks" / "results" / "sizing.md").read_text()
COLUMNS = {"MiniLM (L6, H384)": 1, "BERT-base (L12, H768)": 2}


def _table() -> dict[str, list[str]]:
    section = GUIDE[GUIDE.index("### Sizing") :]
    rows = re.findall(
        r"^\| (.+?) \|(.+)\|$", section[: section.index("\n\n", section.index("| per replica"))], re.M
    )
    return {label: [cell.strip() for cell in cells.split("|")] for label, cells in rows}


def _measured() -> dict[str, list[float]]:
    out = {}
    for name in COLUMNS:
        (row,) = re.findall(rf"^\| {re.escape(name)} \|(.+)\|$", RESULTS, re.M)
        out[name] = [float(v) for v in re.findall(r"(\d+) MiB", row)]
    return out


def _as_mib(cell: str) -> float:
    value, unit = re.fullmatch(r"\*\*([\d.]+) (MiB|GiB)\*\*", cell).groups()  # type: ignore[union-attr]
    return float(value) * (1024 if unit == "GiB" else 1)


def test_bold_figures_are_the_measurements() -> None:
    table, measured = _table(), _measured()
    rows = {
        "pretrained folder (`bert_model.ckpt.*`, vocab, config)": 0,
        "fine-tuned output (`model.ckpt-0` and `model.ckpt-343`, each with Adam slots)": 1,
        "server RSS on CPU when ready": 3,
        "… once the large-call function is built, seconds after ready (`serving.sizeClasses`, on by default)": 5,
        "server RSS on CPU, peak (that build, or full batches)": 6,
        "… the same peak with `serving.sizeClasses: false`": 8,
    }
    for label, index in rows.items():
        for name, column in COLUMNS.items():
            shown, value = _as_mib(table[label][column - 1]), measured[name][index]
            assert abs(shown - value) <= max(1.0, 0.05 * value), f"{label} / {name}: {shown} vs {value}"


def test_examples_are_sized_by_the_table() -> None:
    table = _table()
    seed = yaml.safe_load((ROOT / "crds" / "examples" / "mrpc-gpu-pvc.yaml").read_text())
    assert seed["spec"]["resources"]["memory"] == table["GPU pod: `resources.memory` (request = limit)"][1]
    claim = next(
        d
        for d in yaml.safe_load_all((ROOT / "docs" / "examples" / "model-copy-job.yaml").read_text())
        if d["kind"] == "PersistentVolumeClaim"
    )
    assert (
        claim["spec"]["resources"]["requests"]["storage"] == table["PVC request (both folders + headroom)"][1]
    )
    cpu = yaml.safe_load((ROOT / "crds" / "examples" / "minimal-cpu.yaml").read_text())
    assert cpu["spec"]["resources"]["memory"] in table["CPU pod: `resources.memory` (request = limit)"][1]
