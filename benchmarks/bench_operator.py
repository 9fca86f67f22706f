#!/usr/bin/env python3
"""Operator scale benchmark on the local control plane (hack/cluster).

What it measures (issue 5, part 7), each phase on a fresh cluster so earlier objects never
skew a later phase:

* **bulk**: create N (default 500) BertServers as fast as 8 client threads can POST them; time
  from the first request until every BertServer has its Deployment *and* a status written for
  its generation (``status.observedGeneration == metadata.generation``);
* **latency**: with B (default 200) converged BertServers present, create M (default 100) more
  one at a time and time each from the create request to the watch event announcing its
  Deployment; p50/p99 over the M;
* **memory**: the operator process's peak RSS (``VmHWM``) in each phase.

The operator runs exactly as ``python -m bertserve_operator`` with its default settings, as a
local process with the admin kubeconfig (RBAC costs nothing measurable). Observation uses plain
watch streams (requests + the cluster's admin certificate), one for Deployments, one for
BertServers. Pods: ``--replicas`` (default 1) per BertServer, CPU only, on extra fake CPU nodes,
so the controller-manager, scheduler and kwok do their real work alongside.

    .venv/bin/python benchmarks/bench_operator.py [--count 500] [--write benchmarks/results/operator.md]
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from machine_facts import cores, cpu_model, memory_gib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from bertserver_manifests import KWOK_MODEL  # noqa: E402  (test helpers: the one manifest factory)
from bertserver_manifests import bertserver as bertserver_manifest  # noqa: E402
from operator_harness import localcluster  # noqa: E402  (test helpers: loads hack/cluster/localcluster.py)

NAMESPACE = "bench"
GROUP_PATH = "/apis/bertserve.io/v1alpha1"


# --------------------------------------------------------------------------- API access


class Api:
    """Minimal admin client: POST objects, stream watch events."""

    def __init__(self, cluster: Any) -> None:
        self.base = cluster.server
        pki = cluster.pki_dir
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy, and our CA (not $REQUESTS_CA_BUNDLE) for 127.0.0.1
        self.session.cert = (str(pki / "admin.crt"), str(pki / "admin.key"))
        self.session.verify = str(pki / "ca.crt")
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16)
        self.session.mount("https://", adapter)

    def post(self, path: str, body: dict[str, Any]) -> None:
        resp = self.session.post(self.base + path, json=body, timeout=60)
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"POST {path}: {resp.status_code} {resp.text[:300]}")

    def watch(self, path: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
        """Events of a collection from now on (a fresh list's resourceVersion, then watch)."""
        rv = self.session.get(self.base + path, params={"limit": 1}, timeout=60).json()["metadata"][
            "resourceVersion"
        ]
        while not stop.is_set():
            params = {
                "watch": "1",
                "resourceVersion": rv,
                "timeoutSeconds": "30",
                "allowWatchBookmarks": "true",
            }
            try:
                with self.session.get(self.base + path, params=params, stream=True, timeout=(10, 60)) as resp:
                    for line in resp.iter_lines():
                        if stop.is_set():
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        rv = event["object"].get("metadata", {}).get("resourceVersion", rv)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            yield event["object"]
            except requests.RequestException:
                if stop.is_set():
                    return  # the cluster is going down
                time.sleep(0.5)  # reconnect from the last resourceVersion


@dataclass
class Observer:
    """Times at which each name's Deployment appeared and its status was first written."""

    deployment_seen: dict[str, float] = field(default_factory=dict)
    status_seen: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cond: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)

    def run(self, api: Api, stop: threading.Event) -> list[threading.Thread]:
        def deployments() -> None:
            for obj in api.watch(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", stop):
                with self.cond:
                    self.deployment_seen.setdefault(obj["metadata"]["name"], time.monotonic())
                    self.cond.notify_all()

        def bertservers() -> None:
            for obj in api.watch(f"{GROUP_PATH}/namespaces/{NAMESPACE}/bertservers", stop):
                status = obj.get("status") or {}
                if status.get("observedGeneration") == obj["metadata"].get("generation") and status.get(
                    "conditions"
                ):
                    with self.cond:
                        self.status_seen.setdefault(obj["metadata"]["name"], time.monotonic())
                        self.cond.notify_all()

        threads = [threading.Thread(target=f, daemon=True) for f in (deployments, bertservers)]
        for t in threads:
            t.start()
        return threads

    def wait(self, names: set[str], timeout: float, *, status: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                done = names <= self.deployment_seen.keys() and (
                    not status or names <= self.status_seen.keys()
                )
                if done:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))


def bertserver(name: str, replicas: int) -> dict[str, Any]:
    spec = {
        "model": KWOK_MODEL,
        "replicas": replicas,
        "resources": {"gpus": 0, "cpu": "10m", "memory": "16Mi"},
    }
    return bertserver_manifest(name, spec, NAMESPACE)


# --------------------------------------------------------------------------- the operator


class Operator:
    def __init__(self, kubeconfig: Path, log: Path, settings: dict[str, str]) -> None:
        self.log = log
        port = localcluster().free_ports(1)[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
        env["KUBECONFIG"] = str(kubeconfig)
        env.update({f"BERTSERVE_{k.upper()}": v for k, v in settings.items()})
        cmd = [
            sys.executable,
            "-m",
            "bertserve_operator",
            "-A",
            f"--liveness-endpoint=http://127.0.0.1:{port}/healthz",
            "--allow-host-path",  # the benchmark's BertServers name a (never read) node directory
        ]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        atexit.register(self._kill)  # never leave an operator behind when a phase fails
        self.health = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.health, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def api_requests(self) -> dict[str, int]:
        """The operator's own count of API requests (from its liveness detail)."""
        detail = requests.get(self.health, timeout=5).json()
        return dict(detail.get("bertserve", {}).get("requests", {}))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- phases


@dataclass
class Cluster:
    state: Path
    replicas: int

    def __enter__(self) -> Any:
        lc = localcluster()
        pods_needed = 0 if self.replicas == 0 else 600 * self.replicas
        extra = [
            lc.NodeSpec(f"bench-node-{i}", cpu="64", memory="256Gi", pods=250)
            for i in range(pods_needed // 250 + 1)
        ]
        self.cluster = lc.LocalCluster(
            self.state, lc.build_binaries(quiet=True), nodes=(*lc.DEFAULT_NODES, *extra)
        )
        self.cluster.up()
        self.cluster.kubectl(
            "apply", "--server-side", "-f", str(ROOT / "crds" / "bertservers.bertserve.io.yaml")
        )
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "crd/bertservers.bertserve.io", "--timeout=60s"
        )
        self.cluster.create_namespace(NAMESPACE)
        return self.cluster

    def __exit__(self, *exc: object) -> None:
        self.cluster.down(purge=True)


def _load() -> float:
    return os.getloadavg()[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(cluster: Any, operator: Operator) -> dict[str, float]:
    pids = {name: rec.pid for name, rec in cluster.processes.items()}
    pids["operator"] = operator.proc.pid
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 1) for name in before}


def bulk_phase(
    work: Path, count: int, replicas: int, timeout: float, settings: dict[str, str]
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    with Cluster(work / "cluster", replicas) as cluster:
        api = Api(cluster)
        stop = threading.Event()
        obs = Observer()
        obs.run(api, stop)
        time.sleep(1)
        op = Operator(cluster.kubeconfig, work / "operator-bulk.log", settings)
        rss_idle = op.rss_mb()
        names = [f"bert-{i:04d}" for i in range(count)]
        load_before = _load()
        cpu_before = cpu_snapshot(cluster, op)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: api.post(
                        f"{GROUP_PATH}/namespaces/{NAMESPACE}/bertservers", bertserver(n, replicas)
                    ),
                    names,
                )
            )
        t_created = time.monotonic() - t0
        ok = obs.wait(set(names), timeout)
        t_done = time.monotonic() - t0
        cpu = cpu_used(cpu_before, cpu_snapshot(cluster, op))
        requests_at_convergence = op.api_requests()
        deps = [obs.deployment_seen[n] - t0 for n in names if n in obs.deployment_seen]
        stats = [obs.status_seen[n] - t0 for n in names if n in obs.status_seen]
        time.sleep(5)  # settle: late status updates from pod readiness
        result = {
            "count": count,
            "replicas": replicas,
            "converged": ok,
            "create_requests_s": round(t_created, 2),
            "all_deployments_s": round(max(deps), 2) if deps else None,
            "all_status_s": round(max(stats), 2) if stats else None,
            "converged_s": round(t_done, 2),
            "deployments": len(deps),
            "statuses": len(stats),
            "rss_idle_mb": round(rss_idle, 1),
            "rss_peak_mb": round(op.peak_rss_mb(), 1),
            "load_before": round(load_before, 2),
            "load_after": round(_load(), 2),
            "cpu_s_until_converged": cpu,
            "operator_requests_at_convergence": requests_at_convergence,
            "operator_requests_after_settling": op.api_requests(),
        }
        result["operator_exit"] = op.stop()
        stop.set()
        return result


def latency_phase(
    work: Path, existing: int, samples: int, replicas: int, timeout: float, *, settings: dict[str, str]
) -> dict[str, Any]:
    with Cluster(work / "latency", replicas) as cluster:
        api = Api(cluster)
        stop = threading.Event()
        obs = Observer()
        obs.run(api, stop)
        time.sleep(1)
        op = Operator(cluster.kubeconfig, work / "operator-latency.log", settings)
        base = [f"base-{i:04d}" for i in range(existing)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: api.post(
                        f"{GROUP_PATH}/namespaces/{NAMESPACE}/bertservers", bertserver(n, replicas)
                    ),
                    base,
                )
            )
        if not obs.wait(set(base), timeout):
            raise RuntimeError(f"{existing} base objects did not converge in {timeout}s")
        time.sleep(5)  # let pod readiness and status updates of the base settle
        latencies = []
        for i in range(samples):
            name = f"probe-{i:04d}"
            t0 = time.monotonic()
            api.post(f"{GROUP_PATH}/namespaces/{NAMESPACE}/bertservers", bertserver(name, replicas))
            if not obs.wait({name}, 30, status=False):
                raise RuntimeError(f"{name}: no Deployment within 30s")
            latencies.append(obs.deployment_seen[name] - t0)
            time.sleep(0.2)
        latencies.sort()
        result = {
            "existing": existing,
            "samples": samples,
            "replicas": replicas,
            "p50_s": round(statistics.median(latencies), 3),
            "p90_s": round(latencies[int(0.9 * (len(latencies) - 1))], 3),
            "p99_s": round(latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], 3),
            "max_s": round(latencies[-1], 3),
            "min_s": round(latencies[0], 3),
            "rss_peak_mb": round(op.peak_rss_mb(), 1),
        }
        result["operator_exit"] = op.stop()
        stop.set()
        return result


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "cpu": cpu_model(),
        "cores": str(cores()),
        "memory": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kopf": version("kopf"),
        "kubernetes client": version("kubernetes"),
        "control plane": Path(localcluster().build_binaries(quiet=True)).parent.name,
    }


def report(
    m: dict[str, str], runs: list[dict[str, Any]], lat: dict[str, Any], args: argparse.Namespace
) -> str:
    from bertserve_operator.settings import Settings

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    ordered = sorted(runs, key=lambda r: r["converged_s"])
    bulk = ordered[(len(ordered) - 1) // 2]  # the median run (lower median for an even count)
    peak = max(r["rss_peak_mb"] for r in runs)
    defaults = Settings()

    rows = [
        (f"{bulk['count']} BertServers: every Deployment + status (median of {len(runs)})", f"{bulk['converged_s']} s", "≤ 60 s",
         verdict(bool(bulk["converged"]) and bulk["converged_s"] <= 60)),
        (f"apply → Deployment p50 (at {lat['existing']}+ objects)", f"{lat['p50_s']} s", "≤ 0.5 s", verdict(lat["p50_s"] <= 0.5)),
        (f"apply → Deployment p99 (at {lat['existing']}+ objects)", f"{lat['p99_s']} s", "≤ 2 s", verdict(lat["p99_s"] <= 2)),
        ("operator peak RSS (bulk phases, max)", f"{peak} MB", "≤ 200 MB", verdict(peak <= 200)),
    ]  # fmt: skip
    lines = [
        "# Operator benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_operator.py --count {args.count} --existing {args.existing} "
        f"--samples {args.samples} --replicas {args.replicas} --repeat {args.repeat}`",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "## Details",
        "",
        "- Bulk runs, each on a fresh cluster (converged after s; 1-min load average before → after): "
        + ", ".join(f"{r['converged_s']} ({r['load_before']} → {r['load_after']})" for r in runs)
        + ". Runs vary with the load other jobs put on the same cores (the control plane, the operator and "
        "the clients all share them).",
        f"- Median bulk run: {bulk['count']} BertServers POSTed by 8 client threads in {bulk['create_requests_s']} s; "
        f"last Deployment seen at {bulk['all_deployments_s']} s, last status at {bulk['all_status_s']} s after the first "
        f"request ({bulk['deployments']} Deployments, {bulk['statuses']} statuses). Each has {bulk['replicas']} "
        "replica(s): the controller-manager, scheduler and kwok create, place and start those pods at the same time, "
        "and the operator rewrites status as they become ready.",
        f"- Operator RSS: {bulk['rss_idle_mb']} MB after start-up, peak {bulk['rss_peak_mb']} MB with {bulk['count']} "
        f"BertServers, their Deployments, Services and pods in its watch cache; latency phase peak {lat['rss_peak_mb']} MB.",
        f"- Latency phase: {lat['existing']} converged BertServers first, then {lat['samples']} created one at a time "
        f"(0.2 s apart); create request → Deployment ADDED on a watch: min {lat['min_s']} s, p50 {lat['p50_s']} s, "
        f"p90 {lat['p90_s']} s, p99 {lat['p99_s']} s, max {lat['max_s']} s.",
        f"- Load average (1 min) before / after the bulk phase: {bulk['load_before']} / {bulk['load_after']} "
        f"on {cores()} cores (other jobs share the machine). CPU seconds used from the first request until "
        "convergence: " + ", ".join(f"{k} {v}" for k, v in bulk["cpu_s_until_converged"].items()) + ".",
        "- API requests made by the operator until convergence: "
        + ", ".join(f"{k} {v}" for k, v in bulk["operator_requests_at_convergence"].items())
        + "; 5 s later, with pods ready: "
        + ", ".join(f"{k} {v}" for k, v in bulk["operator_requests_after_settling"].items())
        + " (kopf's own watch and annotation requests not included).",
        f"- The operator ran as `python -m bertserve_operator -A` with default settings ({defaults.workers} queue "
        f"workers, {defaults.handler_threads} handler threads, child applies in parallel), each phase on a fresh cluster. "
        "Every measurement includes the whole local control plane "
        "(etcd, kube-apiserver, controller-manager, scheduler, kwok) running on the same cores as the operator and "
        "the clients.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--existing", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--repeat", type=int, default=3, help="bulk runs (the report shows each and the median)"
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--write", type=Path, help="write the markdown report here")
    parser.add_argument("--json", type=Path, help="write raw results as JSON here")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="operator setting (BERTSERVE_<NAME>)"
    )
    parser.add_argument("--bulk-only", action="store_true", help="skip the latency phase (quick iterations)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        work = Path(tmp)
        settings = dict(item.split("=", 1) for item in args.set)
        runs = []
        for i in range(args.repeat):
            runs.append(bulk_phase(work / f"run{i}", args.count, args.replicas, args.timeout, settings))
            print(json.dumps({"bulk": runs[-1]}), flush=True)
        if args.bulk_only:
            return 0
        lat = latency_phase(work, args.existing, args.samples, args.replicas, args.timeout, settings=settings)
        print(json.dumps({"latency": lat}), flush=True)
    m = machine()
    text = report(m, runs, lat, args)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": m, "bulk": runs, "latency": lat}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
