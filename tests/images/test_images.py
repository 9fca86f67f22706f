"""The shipped container images build here, run like a pod, and agree with the manifests.

Why these tests exist: a Dockerfile nobody has built is a guess, and an image whose entrypoint,
user or writable paths differ from what the operator renders fails only on a user's cluster.
So the real Dockerfiles are built with buildah (``hack/images/build.sh``, cached), the OCI
archives `make images` ships are unpacked and run with runc the way a kubelet would run the
rendered Deployment (read-only root, ``/tmp`` writable, model read-only at ``/models``, the
image's non-root user), and the unmodified ``bert-serving-client`` talks to the server over
loopback. Missing tools are a failure with the reason, never a skip.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import oci_images
import pytest
import yaml
from ports import free_ports

from bertserve_api import manifests
from bertserve_api.contract import parse_argv
from bertserve_api.spec import parse_spec

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = oci_images.REPO_ROOT
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
EXAMPLE = ROOT / "crds/examples/minimal-cpu.yaml"
READY_TIMEOUT_S = 300
READY_LOG_LINE = "all set, ready to serve request!"  # what bert-as-service 1.10.0 logs when ready
CPU_IMAGE_MAX_BYTES = 1_500_000_000  # issue 15: a CPU node pulls at most 1.5 GB
SERVER_IMAGES = ("server", "server-cpu")  # the GPU-capable image and the CPU-only one, same Dockerfile
TOOLS_NEVER_IN_IMAGES = ("gcc", "cc", "make", "git", "apt-get-build-dep", "g++")


def _require_toolchain() -> None:
    problems = oci_images.toolchain_problems()
    if problems:
        pytest.fail("container image toolchain unusable: " + "; ".join(problems), pytrace=False)


def _build(name: str) -> dict[str, Any]:
    _require_toolchain()
    try:
        return oci_images.build_images([name])[name]
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def gpu_server_image() -> dict[str, Any]:
    return _build("server")


@pytest.fixture(scope="module")
def cpu_server_image() -> dict[str, Any]:
    return _build("server-cpu")


@pytest.fixture(scope="module")
def operator_image() -> dict[str, Any]:
    return _build("operator")


@pytest.fixture(scope="module")
def gpu_server_bundle(gpu_server_image: dict[str, Any]) -> Path:
    return oci_images.unpack(gpu_server_image)


@pytest.fixture(scope="module")
def cpu_server_bundle(cpu_server_image: dict[str, Any]) -> Path:
    return oci_images.unpack(cpu_server_image)


@pytest.fixture(scope="module", params=SERVER_IMAGES)
def server_bundle(request: pytest.FixtureRequest) -> Path:
    """Each server image in turn: every server test runs against both (the operator picks either)."""
    return Path(
        request.getfixturevalue("gpu_server_bundle" if request.param == "server" else "cpu_server_bundle")
    )


@pytest.fixture(scope="module")
def operator_bundle(operator_image: dict[str, Any]) -> Path:
    return oci_images.unpack(operator_image)


def _image_config(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / oci_images.IMAGE_CONFIG).read_text())["config"]


def _image_env(bundle: Path) -> dict[str, str]:
    return dict(e.split("=", 1) for e in _image_config(bundle).get("Env") or [])


def _rendered_container() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec and server container the operator renders for the minimal CPU example."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = parse_spec(doc["spec"])
    owner = manifests.Owner(name=doc["metadata"]["name"], namespace="default")
    options = manifests.RenderOptions(default_image=f"localhost/bertserve-server:{VERSION}")
    deployment = manifests.deployment(owner, spec, options)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == manifests.SERVER_CONTAINER]
    return pod, container


def _interpreter(bundle: Path, command: str) -> str:
    """The Python that runs ``command`` inside the image (from the console script's shebang)."""
    script = oci_images.resolve_in_rootfs(bundle / "rootfs", command, _image_env(bundle).get("PATH", ""))
    assert script is not None, f"{command} is not on the image's PATH"
    first = script.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("#!"), f"{command} is not a script: {first!r}"
    return first[2:].strip().split()[0]


def _run_python(bundle: Path, command: str, code: str, *, binds: dict[str, str] | None = None) -> str:
    """Run ``code`` with the image's Python, as the image's user, read-only root; returns its output."""
    with oci_images.Container(
        bundle,
        command=[_interpreter(bundle, command), "-c", code],
        binds=binds or {},
        env={"HOME": manifests.TMP_MOUNT},
        lifetime_s=120,
    ) as c:
        rc = c.wait(timeout=120)
        out = c.output()
    assert rc == 0, f"in-image python failed ({rc}):\n{out}"
    return out


def _readyz(port: int) -> int | str:
    """HTTP status of /readyz, or "refused" while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (ConnectionError, urllib.error.URLError, TimeoutError, OSError):
        return "refused"


# --------------------------------------------------------------------------- server image


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT in Google's layout, readable by the image's non-root user."""
    from bertserve_server.model.synthetic import write_random_bert

    root = tmp_path_factory.mktemp("models")
    write_random_bert(root / "tiny", layers=2, hidden=32, heads=4, intermediate=64)
    # pytest's temp dirs are 0700 root; the container runs as uid 10001.
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def running_server(server_bundle: Path, tiny_model: Path) -> Iterator[dict[str, Any]]:
    """The server image serving the tiny model on loopback; yields its ports and readiness history."""
    port, port_out, http_port, peer_port = free_ports(4)
    _, container = _rendered_container()
    assert _readyz(http_port) == "refused"
    args = [
        f"-model_dir={manifests.MODEL_MOUNT}/tiny",
        "-cpu",
        "-bind_host=127.0.0.1",
        f"-port={port}",
        f"-port_out={port_out}",
        f"-http_port={http_port}",
        f"-peer_port={peer_port}",
    ]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    with oci_images.Container(
        server_bundle,
        args=args,  # the image's ENTRYPOINT runs, as in the pod
        binds={str(tiny_model): manifests.MODEL_MOUNT},
        env=env,
        lifetime_s=900,
    ) as c:
        history: list[int | str] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status = _readyz(http_port)
            if not history or history[-1] != status:
                history.append(status)
            if status == 200:
                break
            assert c.running(), f"server exited before it was ready:\n{c.output()}"
            time.sleep(0.1)
        else:
            pytest.fail(f"/readyz never returned 200 in {READY_TIMEOUT_S}s ({history}):\n{c.output()}")
        yield {"port": port, "port_out": port_out, "http_port": http_port, "history": history, "container": c}


def test_server_readyz_turns_ready_only_after_the_model_loaded(running_server: dict[str, Any]) -> None:
    history = running_server["history"]
    assert history[-1] == 200
    # HTTP binds first and answers 503 while the model loads and warms up; 200 comes after.
    assert 503 in history[:-1], f"/readyz was never 503 before ready: {history}"
    assert set(history[:-1]) <= {"refused", 503}, f"unexpected /readyz answers before ready: {history}"
    log = running_server["container"].output()
    assert READY_LOG_LINE in log, f"the 1.10.0 ready line is missing from the server log:\n{log}"


def test_server_image_answers_the_unmodified_client_over_loopback(running_server: dict[str, Any]) -> None:
    from bert_serving.client import BertClient

    bc = BertClient(
        ip="127.0.0.1",
        port=running_server["port"],
        port_out=running_server["port_out"],
        timeout=60_000,
    )
    try:
        vectors = bc.encode(["hello world", "the dog is good", "a cat"])
        config = bc.server_config
    finally:
        bc.close()
    assert vectors.shape == (3, 32)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    assert not np.allclose(vectors[0], vectors[1]), "different sentences gave the same vector"
    assert config["server_version"] == "1.10.0"
    # Both images report the TensorFlow they run (the CPU image's comes as tensorflow-cpu).
    built_with = re.search(
        r"ARG TENSORFLOW_VERSION=(\S+)", (ROOT / "server_image" / "Dockerfile").read_text()
    )
    assert built_with, "server_image/Dockerfile names no TENSORFLOW_VERSION"
    assert config["tensorflow_version"] == built_with.group(1).split("."), config["tensorflow_version"]


def test_server_image_root_is_read_only_and_only_tmp_is_writable(
    server_bundle: Path, tiny_model: Path
) -> None:
    code = (
        "import os, pathlib\n"
        "res = {'uid': os.getuid()}\n"
        "for p in ['/tmp/probe', '/models/probe', '/opt/probe', '/etc/probe', os.getcwd() + '/probe']:\n"
        "    try:\n"
        "        pathlib.Path(p).write_text('x'); res[p] = 'writable'\n"
        "    except OSError as e:\n"
        "        res[p] = e.errno\n"
        "res['model'] = sorted(os.listdir('/models/tiny'))\n"
        "import json; print(json.dumps(res))\n"
    )
    out = _run_python(
        server_bundle, manifests.SERVER_COMMAND, code, binds={str(tiny_model): manifests.MODEL_MOUNT}
    )
    res = json.loads(out.strip().splitlines()[-1])
    assert res.pop("uid") == manifests.RUN_AS_USER
    assert res.pop("/tmp/probe") == "writable"
    assert "bert_config.json" in res.pop("model")
    erofs = 30
    assert set(res.values()) == {erofs}, res


def test_each_image_holds_only_its_own_stack(server_bundle: Path, operator_bundle: Path) -> None:
    code = (
        "import importlib.util as u, json, shutil\n"
        "mods = ['tensorflow', 'zmq', 'tokenizers', 'kopf', 'kubernetes', 'bertserve_api']\n"
        f"tools = {list(TOOLS_NEVER_IN_IMAGES)!r}\n"
        "import importlib.metadata as md\n"
        "print(json.dumps({'mods': {m: u.find_spec(m) is not None for m in mods},"
        " 'tools': [t for t in tools if shutil.which(t)], 'version': md.version('bertserve')}))\n"
    )
    server = json.loads(_run_python(server_bundle, manifests.SERVER_COMMAND, code).strip().splitlines()[-1])
    operator_cmd = _image_config(operator_bundle)["Entrypoint"][0]
    operator = json.loads(_run_python(operator_bundle, operator_cmd, code).strip().splitlines()[-1])
    assert server["mods"] == {
        "tensorflow": True,
        "zmq": True,
        "tokenizers": True,
        "kopf": False,
        "kubernetes": False,
        "bertserve_api": True,
    }
    assert operator["mods"] == {
        "tensorflow": False,
        "zmq": False,
        "tokenizers": False,
        "kopf": True,
        "kubernetes": True,
        "bertserve_api": True,
    }
    assert server["tools"] == [] and operator["tools"] == [], (server["tools"], operator["tools"])
    assert server["version"] == operator["version"] == VERSION


def test_images_do_not_trust_the_build_hosts_local_cas(server_bundle: Path, operator_bundle: Path) -> None:
    """The host CA dir is mounted during builds (TLS-intercepting proxy); it must not ship."""
    host_cas = [
        "".join(line for line in p.read_text().splitlines() if not line.startswith("-----"))
        for p in Path(oci_images.HOST_CA_DIR).glob("*.crt")
    ]
    for bundle in (server_bundle, operator_bundle):
        rootfs = bundle / "rootfs"
        trusted = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text().replace("\n", "")
        assert "BEGIN CERTIFICATE" in trusted
        leaked = [ca[:40] for ca in host_cas if ca in trusted]
        assert not leaked, f"{bundle.name} trusts the build host's CAs {leaked}"
        dangling = [
            p.name
            for p in (rootfs / "etc/ssl/certs").iterdir()
            if p.is_symlink() and "/local/" in str(p.readlink())
        ]
        assert not dangling, dangling


def _distributions(bundle: Path) -> dict[str, str]:
    """The Python distributions installed in the image (normalised name -> version)."""
    code = (
        "import importlib.metadata as md, json\n"
        "print(json.dumps({d.metadata['Name']: d.version for d in md.distributions()}))\n"
    )
    found = json.loads(_run_python(bundle, manifests.SERVER_COMMAND, code).strip().splitlines()[-1])
    # PEP 503 names: tensorflow_cpu and tensorflow-cpu are one distribution.
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found.items()}


def test_cpu_server_image_is_small_and_carries_no_cuda(
    cpu_server_image: dict[str, Any], cpu_server_bundle: Path
) -> None:
    """What a CPU node pulls: at most 1.5 GB, TensorFlow's CPU build, not one nvidia-* wheel."""
    assert cpu_server_image["size_bytes"] <= CPU_IMAGE_MAX_BYTES, cpu_server_image
    dists = _distributions(cpu_server_bundle)
    assert dists.get("tensorflow-cpu") == "2.21.0", sorted(dists)
    assert "tensorflow" not in dists
    assert [d for d in dists if d.startswith("nvidia")] == []
    site = cpu_server_bundle / "rootfs/opt/bertserve/lib/python3.11/site-packages"
    assert not (site / "nvidia").exists()
    cuda_libs = [p.name for p in site.rglob("libcu*.so*")]
    assert cuda_libs == [], cuda_libs


def test_gpu_server_image_ships_each_shared_library_once(gpu_server_bundle: Path) -> None:
    """No library twice (say CUDA from a wheel and again from TensorFlow or the system), and none
    of what TensorFlow installs but never runs: its C++ headers (more copies of CUDA's), libclang."""
    rootfs = gpu_server_bundle / "rootfs"
    seen: dict[str, list[str]] = {}
    for path in rootfs.rglob("*.so*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size > 1_000_000:
            seen.setdefault(path.name, []).append(str(path.relative_to(rootfs)))
    twice = {name: where for name, where in seen.items() if len(where) > 1}
    assert twice == {}, twice
    assert any(name.startswith("libcudnn") for name in seen), "the GPU image lost cuDNN"
    site = rootfs / "opt/bertserve/lib/python3.11/site-packages"
    assert not (site / "tensorflow/include").exists()
    assert not (site / "clang").exists()
    assert (site / "tensorflow").is_dir()


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined, comments dropped), by stage name."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    joined = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[-1].strip(), [])
        current.append(" ".join(line.split()))
    return stages


def test_cpu_and_gpu_stages_keep_the_same_steps_but_the_tensorflow_install() -> None:
    """The two server images come from one file; only how TensorFlow is installed differs."""
    stages = _stages(ROOT / "server_image/Dockerfile")
    assert list(stages) == ["cpu", "gpu"], list(stages)  # gpu last: the default target

    def common(steps: list[str]) -> list[str]:
        return [
            s
            for s in steps
            if not s.startswith(("FROM ", "ARG "))
            and not (s.startswith("RUN ") and "pip install --constraint" in s)
        ]

    assert common(stages["cpu"]) == common(stages["gpu"])
    (cpu_install,) = [s for s in stages["cpu"] if "pip install --constraint" in s]
    assert "tensorflow-cpu==" in cpu_install and "and-cuda" not in cpu_install


# --------------------------------------------------------------------------- operator image


def test_operator_image_starts_and_prints_its_help(operator_bundle: Path) -> None:
    with oci_images.Container(operator_bundle, args=["--help"], lifetime_s=120) as c:
        rc = c.wait(timeout=120)
        out = c.output()
    assert rc == 0, out
    assert "usage: python -m bertserve_operator" in out, out
    assert "BERTSERVE_" in out, out  # the settings' environment names are documented there
    config = _image_config(operator_bundle)
    assert config.get("User") not in (None, "", "0", "root"), config.get("User")


# --------------------------------------------------------------------------- manifests vs images


def test_built_tags_and_archives_carry_the_project_version(
    gpu_server_image: dict[str, Any], cpu_server_image: dict[str, Any], operator_image: dict[str, Any]
) -> None:
    built = (("server", gpu_server_image), ("server-cpu", cpu_server_image), ("operator", operator_image))
    refs = {name: image["ref"] for name, image in built}
    assert refs == {
        "server": f"localhost/bertserve-server:{VERSION}",
        "server-cpu": f"localhost/bertserve-server:{VERSION}-cpu",
        "operator": f"localhost/bertserve-operator:{VERSION}",
    }
    for name, image in built:
        assert Path(image["archive"]).name == f"bertserve-{name}-{VERSION}.tar"
        assert image["archive_ref"] == image["ref"].rpartition(":")[2]
        config = oci_images.image_config(image["archive"], image["archive_ref"])
        assert config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION


def test_operator_default_server_image_and_chart_values_derive_from_the_project_version() -> None:
    from bertserve_operator import settings

    default_image = settings.Settings().default_image
    repository, _, tag = default_image.rpartition(":")
    assert tag == VERSION, default_image
    assert repository.endswith("/bertserve-server"), default_image
    assert settings.Settings().default_cpu_image == f"{default_image}-cpu"

    chart_dir = ROOT / "helm/bertserve-operator"
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION
    operator_tag = values["image"].get("tag") or chart["appVersion"]
    assert operator_tag == VERSION
    assert values["image"]["repository"].endswith("/bertserve-operator")
    server_image = values.get("serverImage") or ""
    if server_image:
        assert server_image.rpartition(":")[2] == VERSION, server_image
    cpu_image = values.get("serverCpuImage") or ""
    if cpu_image:
        assert cpu_image.rpartition(":")[2] == f"{VERSION}-cpu", cpu_image


def test_server_image_matches_what_the_rendered_deployment_expects(server_bundle: Path) -> None:
    pod, container = _rendered_container()
    config = _image_config(server_bundle)
    # `command` overrides the ENTRYPOINT, so both must name the same program, found on the image's PATH.
    assert container["command"] == [manifests.SERVER_COMMAND]
    assert config["Entrypoint"] == container["command"], config["Entrypoint"]
    path = _image_env(server_bundle).get("PATH", "")
    assert oci_images.resolve_in_rootfs(server_bundle / "rootfs", manifests.SERVER_COMMAND, path)
    # runAsNonRoot can only be verified by the kubelet for a numeric user; it must be the pod's.
    assert config.get("User", "").split(":")[0] == str(pod["securityContext"]["runAsUser"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Every path the pod mounts is a declared volume of the image, and nothing else must be written
    # (the model mount may be narrowed to a subPath below /models; Secrets such as the mesh key are
    # mounted read-only wherever they are).
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    model_root = manifests.MODEL_MOUNT + "/"
    assert {manifests.TMP_MOUNT, manifests.PEER_KEY_MOUNT} <= mounted, mounted
    elsewhere = [
        m
        for m in container["volumeMounts"]
        if m["mountPath"] not in (manifests.TMP_MOUNT, manifests.MODEL_MOUNT)
        and not m["mountPath"].startswith(model_root)
    ]
    assert all(m.get("readOnly") is True for m in elsewhere), elsewhere
    volumes = set(config.get("Volumes") or {})
    assert {manifests.MODEL_MOUNT, manifests.TMP_MOUNT} <= volumes, volumes
    assert {e["name"]: e["value"] for e in container["env"]}.get("HOME") == manifests.TMP_MOUNT
    workdir = config.get("WorkingDir") or "/"
    assert (server_bundle / "rootfs" / workdir.lstrip("/")).is_dir(), workdir
    exposed = {int(p.split("/")[0]) for p in config.get("ExposedPorts") or {}}
    assert {p["containerPort"] for p in container["ports"]} <= exposed, exposed
    # The image's own contract module accepts every argument the operator renders.
    code = (
        "from bertserve_api.contract import parse_argv\n"
        f"c = parse_argv({container['args']!r})\n"
        "print(c.model_dir)\n"
    )
    out = _run_python(server_bundle, manifests.SERVER_COMMAND, code)
    assert out.strip().splitlines()[-1] == parse_argv(container["args"]).model_dir


def test_operator_image_runs_the_one_entry_point_as_non_root(operator_bundle: Path) -> None:
    """The image runs what tests and local runs run (settings from BERTSERVE_* honoured)."""
    config = _image_config(operator_bundle)
    entry = [*config.get("Entrypoint", []), *(config.get("Cmd") or [])]
    assert entry == ["bertserve-operator"], entry
    user = config.get("User", "").split(":")[0]
    assert user.isdigit() and int(user) != 0, user
