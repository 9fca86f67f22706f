"""Kubernetes objects for one BertServer, built by pure functions.

Why it exists: what the operator applies must be reviewable and testable without a cluster.
Every builder takes the parsed spec, the owner's identity and the operator-wide
:class:`RenderOptions` as arguments and returns plain dicts: no globals, no environment, no
clock, and nothing from the inputs is aliased into the output (mutable inputs are deep-copied),
so the same inputs always give byte-identical objects. Golden files in ``tests/api/golden/``
pin the result.

The server's command line comes from :func:`bertserve_api.contract.to_argv`, so the operator
can only render flags the server parses.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bertserve_api import names
from bertserve_api.contract import DEFAULTS, ServerConfig, to_argv
from bertserve_api.spec import BertServerSpec, ModelSpec, to_dict

MODEL_MOUNT = "/models"
"""Where the model source appears in the server container (``-model_dir=/models/<pretrainedPath>``)."""

AUTH_MOUNT = "/var/run/secrets/bertserve/model-auth"
"""Where the download credentials Secret appears, in the fetch init container only."""

TMP_MOUNT = "/tmp"
PEER_KEY_MOUNT = "/var/run/secrets/bertserve/peer"
PEER_KEY_FILE = "peer.key"
"""The mesh secret's key in the ``<name>-peer-key`` Secret, and its file name in the pod."""
PEER_KEY_MIN_BYTES = 32
MODEL_URI_KEY = "url"
FETCH_URL_ENV = "BERTSERVE_FETCH_URL"
"""Where ``bertserve-fetch`` reads the model URL from (its ``URL_ENV``)."""
API_KEY_ENV = "BERTSERVE_API_KEY"
"""The environment variable the server reads its HTTP API key from (never an argument)."""
RESPONSE_BYTES_PER_MEMORY = 8
"""``-max_response_bytes`` = the pod's memory limit / this: one result exists as the array,
its serialization and the client's copy in flight, next to the model itself."""
PEER_PORT = 5557
"""Port replicas forward answers on (``-peer_port``); reached through the ``<name>-peers`` Service."""

RUN_AS_USER = 10001
SERVER_CONTAINER = "bert"
FETCH_CONTAINER = "fetch-model"
SERVER_COMMAND = "bert-serving-start"
FETCH_COMMAND = "bertserve-fetch"

PORT_ZMQ = "zmq"
PORT_ZMQ_OUT = "zmq-out"
PORT_HTTP = "http"
PORT_PEER = "peer"

METRICS_PATH = "/metrics"
"""Prometheus endpoint of the server, on the ``http`` port."""

PROMETHEUS_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
"""Pod annotations that annotation-based Prometheus scrape configs read (``spec.monitoring``)."""

PROBE_PERIOD_SECONDS = 10
"""Startup-probe period; the failure threshold is derived from ``spec.startupTimeoutSeconds``."""

PROGRESS_DEADLINE_MARGIN_SECONDS = 300
"""Default of ``RenderOptions.progress_deadline_margin_seconds``: the Deployment's progress
deadline = the model-loading budget plus this margin, so loading a large checkpoint is never
reported as ``ProgressDeadlineExceeded``."""


@dataclass(frozen=True)
class RenderOptions:
    """Operator-wide inputs of the builders (taken from the operator's settings by the caller).

    ``default_image`` serves BertServers without ``spec.image``, and ``default_cpu_image`` (when
    set) those among them with ``resources.gpus: 0`` (see :func:`server_image_for`);
    ``cluster_domain`` completes the peer Service's DNS name; ``server_log_format`` is passed as ``-log_format``;
    ``network_policies=False`` renders no NetworkPolicy whatever the specs say.
    """

    default_image: str
    default_cpu_image: str = ""
    cluster_domain: str = "cluster.local"
    server_log_format: str = "text"
    network_policies: bool = True
    tmp_size_limit: str = "1Gi"
    fetch_cpu_request: str = "100m"
    fetch_memory_request: str = "256Mi"
    fetch_memory_limit: str = "1Gi"
    progress_deadline_margin_seconds: int = PROGRESS_DEADLINE_MARGIN_SECONDS


@dataclass(frozen=True)
class Owner:
    """The BertServer the children belong to; ``uid`` empty means "no ownerReference" (tests)."""

    name: str
    namespace: str
    uid: str = ""


@dataclass(frozen=True)
class Children:
    """Everything one BertServer renders to; ``hpa``/``pdb`` are ``None`` when disabled."""

    deployment: dict[str, Any]
    service: dict[str, Any]
    peer_service: dict[str, Any]
    hpa: dict[str, Any] | None
    pdb: dict[str, Any] | None
    network_policy: dict[str, Any] | None = None
    model_uri_secret: dict[str, Any] | None = None
    service_monitor: dict[str, Any] | None = None

    def all(self) -> list[dict[str, Any]]:
        """The objects to apply, Deployment first (it is what users wait for)."""
        objs = [self.deployment, self.service, self.peer_service, self.hpa, self.pdb, self.network_policy]
        return [o for o in objs if o is not None]


# --------------------------------------------------------------------------- names


def deployment_name(owner: str) -> str:
    return names.child_name(owner)


def service_name(owner: str) -> str:
    return names.child_name(owner)


def peer_service_name(owner: str) -> str:
    return names.child_name(owner, "peers")


def peer_key_secret_name(owner: str) -> str:
    return names.child_name(owner, "peer-key")


def network_policy_name(owner: str) -> str:
    return names.child_name(owner)


def peer_service_host(owner: Owner, cluster_domain: str) -> str:
    """Fully qualified DNS name of the headless peer Service (resolves to every replica)."""
    return f"{peer_service_name(owner.name)}.{owner.namespace}.svc.{cluster_domain}"


def model_summary(model: ModelSpec) -> str:
    """What ``kubectl get`` shows as Model: ``pretrained + tuned/ckpt`` or ``pretrained/ckpt``."""
    if model.tuned_model_dir:
        return f"{model.pretrained_path} + {model.tuned_model_dir}/{model.ckpt_name}"
    return f"{model.pretrained_path}/{model.ckpt_name}"


def served_model(args: list[str] | tuple[str, ...]) -> str:
    """:func:`model_summary` of the model a pod's server arguments load ("" when unknown).

    Status reports what ready pods serve, so it is read back from their arguments (the same
    ``-model_dir``/``-tuned_model_dir``/``-ckpt_name`` the pod runs with), not from the spec.
    """
    values = {}
    for arg in args:
        name, sep, value = str(arg).lstrip("-").partition("=")
        if sep:
            values[name] = value
    if "model_dir" not in values:
        return ""

    def relative(path: str) -> str:
        return posixpath.relpath(path, MODEL_MOUNT) if path.startswith(MODEL_MOUNT + "/") else path

    ckpt = values.get("ckpt_name", str(DEFAULTS["ckpt_name"]))
    tuned = values.get("tuned_model_dir")
    if tuned:
        return f"{relative(values['model_dir'])} + {relative(tuned)}/{ckpt}"
    return f"{relative(values['model_dir'])}/{ckpt}"


def served_classifier(args: list[str] | tuple[str, ...]) -> str:
    """The classifier labels a pod's server arguments serve at ``/predict`` ("" without ``-classifier``).

    Read back from the pod like :func:`served_model`: ``"not_paraphrase, paraphrase"``, or
    ``"0..n-1"`` when the labels are left to the checkpoint's head.
    """
    flags = [str(arg).lstrip("-") for arg in args]
    if "classifier" not in flags:
        return ""
    for flag in flags:
        name, sep, value = flag.partition("=")
        if name == "classifier_labels" and sep and value:
            return ", ".join(value.split(","))
    return "0..n-1"


def endpoints(owner: Owner, spec: BertServerSpec) -> dict[str, str]:
    """Client addresses inside the cluster, as ``status.endpoints`` shows them."""
    host = f"{service_name(owner.name)}.{owner.namespace}.svc"
    ports = spec.serving.ports
    return {
        "zmq": f"{host}:{ports.zmq}",
        "zmqOut": f"{host}:{ports.zmq_out}",
        "http": f"http://{host}:{ports.http}",
    }


# --------------------------------------------------------------------------- server config


def _model_path(relative: str) -> str:
    return posixpath.normpath(posixpath.join(MODEL_MOUNT, relative))


def drain_budget(termination_grace_period_seconds: int) -> tuple[int, float]:
    """``(preStop sleep, server drain timeout)`` that fit inside the grace period.

    The sleep lets endpoint controllers take the pod out of the Services before the server
    stops accepting work; the drain finishes in-flight batches; a margin is left for exit.
    """
    tgp = termination_grace_period_seconds
    sleep = min(5, tgp // 4)
    margin = min(5, tgp // 4)
    return sleep, float(max(1, tgp - sleep - margin))


_QUANTITY_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity_bytes(quantity: str) -> int:
    """Bytes of a memory quantity as the spec admits it (``8Gi``, ``2048Mi``, ``1.5G``, ``500m``)."""
    number = quantity.rstrip("kMGTPEim")
    suffix = quantity[len(number) :]
    if suffix == "m":
        return int(float(number) / 1000)
    return int(float(number) * _QUANTITY_FACTORS[suffix])


def max_response_bytes(spec: BertServerSpec) -> int | None:
    """The server's result budget from ``resources.memory``; ``None`` (server default) without one."""
    if spec.resources.memory is None:
        return None
    return max(1 << 20, quantity_bytes(spec.resources.memory) // RESPONSE_BYTES_PER_MEMORY)


def server_config(owner: Owner, spec: BertServerSpec, options: RenderOptions) -> ServerConfig:
    """The ``bert-serving-start`` configuration one pod runs with."""
    serving = spec.serving
    gpus = spec.resources.gpus
    _, drain = drain_budget(spec.termination_grace_period_seconds)
    response_bytes = max_response_bytes(spec)
    return ServerConfig(
        model_dir=_model_path(spec.model.pretrained_path),
        tuned_model_dir=_model_path(spec.model.tuned_model_dir) if spec.model.tuned_model_dir else None,
        ckpt_name=spec.model.ckpt_name,
        config_name=spec.model.config_name,
        max_seq_len=serving.max_seq_len,
        do_lower_case=not serving.cased_tokenization,
        pooling_layer=serving.pooling_layer,
        pooling_strategy=serving.pooling_strategy,
        mask_cls_sep=serving.mask_cls_sep,
        no_special_token=serving.no_special_token,
        show_tokens_to_client=serving.show_tokens_to_client,
        no_position_embeddings=serving.no_position_embeddings,
        num_worker=spec.workers,
        max_batch_size=serving.max_batch_size,
        priority_batch_size=serving.priority_batch_size,
        port=serving.ports.zmq,
        port_out=serving.ports.zmq_out,
        http_port=serving.ports.http,
        http_max_connect=serving.http_max_connect,
        cors=serving.cors,
        fp16=serving.fp16,
        xla=serving.xla,
        no_size_classes=not serving.size_classes,
        cpu=gpus == 0,
        gpu_memory_fraction=serving.gpu_memory_fraction,
        # Inside the container the device plugin exposes the granted GPUs as 0..n-1.
        device_map=tuple(range(gpus)),
        prefetch_size=serving.prefetch_size,
        fixed_embed_length=serving.fixed_embed_length,
        verbose=serving.verbose,
        max_queue_size=serving.max_queue_size,
        max_wait_ms=serving.max_wait_ms,
        drain_timeout=drain,
        enable_termination=serving.enable_termination,
        classifier=serving.classifier.enabled,
        # Labels mean nothing without the head (and the server refuses them alone).
        classifier_labels=serving.classifier.labels if serving.classifier.enabled else (),
        peer_service=peer_service_host(owner, options.cluster_domain),
        peer_port=PEER_PORT,
        peer_key_file=f"{PEER_KEY_MOUNT}/{PEER_KEY_FILE}",
        log_format=options.server_log_format,
        max_response_bytes=DEFAULTS["max_response_bytes"] if response_bytes is None else response_bytes,
    )


def server_args(config: ServerConfig) -> list[str]:
    """Container arguments: flags that differ from the defaults, plus the peer port always.

    ``-peer_port`` equals its default, but the headless Service and the container port are
    rendered from the same constant, so the argument is spelled out to keep all three visibly
    in step when someone reads the pod.
    """
    args = to_argv(config)
    if not any(a.startswith("-peer_port=") for a in args):
        args.append(f"-peer_port={config.peer_port}")
    return args


def config_hash(args: list[str], model: ModelSpec) -> str:
    """Hash of the rendered arguments and the model (source, paths, ``revision``).

    Stored as a pod-template annotation: bumping ``model.revision`` changes nothing else in the
    template, yet must roll the pods onto the new files; metadata-only edits of the BertServer
    change neither input, so they never roll pods.
    """
    payload = json.dumps({"args": args, "model": to_dict(model)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- pieces


def _metadata(owner: Owner, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace, "labels": dict(labels)}
    if owner.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _common_path(paths: list[str]) -> str:
    """Longest common directory of relative paths ("" when they share nothing)."""
    split = [[p for p in posixpath.normpath(path).split("/") if p not in ("", ".")] for path in paths]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "/".join(common)


def _model_paths(spec: BertServerSpec) -> list[str]:
    """The pretrained dir and, when set, the tuned dir, relative to the model source."""
    paths = [spec.model.pretrained_path]
    if spec.model.tuned_model_dir:
        paths.append(spec.model.tuned_model_dir)
    return paths


def _model_volume(spec: BertServerSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model volume and the server container's (read-only) mount of it.

    PVC and hostPath sources are narrowed with ``subPath`` to the deepest directory holding both
    the pretrained and the tuned dir, so a pod sees no more of a shared model store than it
    serves; the paths in the arguments stay ``/models/<path>`` either way.
    """
    source = spec.model.source
    mount: dict[str, Any] = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
    if source.uri is not None:
        return {"name": "model", "emptyDir": {"sizeLimit": source.uri.size_limit}}, mount
    common = _common_path(_model_paths(spec))
    if common:
        mount["mountPath"] = f"{MODEL_MOUNT}/{common}"
        mount["subPath"] = common
    if source.pvc is not None:
        mount["readOnly"] = source.pvc.read_only
        volume = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": source.pvc.read_only},
        }
        return volume, mount
    assert source.host_path is not None
    host = source.host_path
    return {"name": "model", "hostPath": {"path": host.path, "type": host.type}}, mount


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def model_uri_secret_name(owner: str, url: str) -> str:
    """The operator's Secret for an inline URL: one per URL (it is created once, never updated,
    so a changed URL gets a new Secret; the old one goes with the BertServer)."""
    return names.child_name(owner, f"model-uri-{hashlib.sha256(url.encode()).hexdigest()[:8]}")


def _url_source(owner: Owner, spec: BertServerSpec) -> dict[str, Any] | None:
    """Where the fetch container's ``BERTSERVE_FETCH_URL`` comes from (a Secret key, never args)."""
    uri = spec.model.source.uri
    if uri is None:
        return None
    if uri.url is None:
        assert uri.secret_ref is not None  # the parser requires one of them
        return {"name": uri.secret_ref.name, "key": MODEL_URI_KEY}
    return {"name": model_uri_secret_name(owner.name, uri.url), "key": MODEL_URI_KEY}


def model_uri_secret(owner: Owner, spec: BertServerSpec) -> dict[str, Any] | None:
    """The Secret holding an inline ``source.uri.url``, or ``None`` when there is none."""
    uri = spec.model.source.uri
    if uri is None or uri.url is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(
            owner, model_uri_secret_name(owner.name, uri.url), names.common_labels(owner.name)
        ),
        "type": "Opaque",
        "immutable": True,
        "data": {MODEL_URI_KEY: base64.b64encode(uri.url.encode()).decode("ascii")},
    }


def _fetch_container(
    owner: Owner, spec: BertServerSpec, image: str, options: RenderOptions
) -> dict[str, Any] | None:
    """The init container that downloads (and verifies) a ``uri`` source into the emptyDir.

    ``--dest`` is the deepest directory holding both model paths, by the fetch's layout rule (a
    folder alone at the archive's top is unwrapped into ``--dest``): Google's
    ``uncased_L-12_H-768_A-12.zip`` with ``pretrainedPath: uncased_L-12_H-768_A-12`` and a
    bundle of ``uncased_L-12_H-768_A-12/`` plus ``mrpc_output/`` both land where the paths say.

    The URL comes from a Secret through the environment: a pod's arguments are readable by
    anyone who may read pods, and a pre-signed URL is a credential.
    """
    uri = spec.model.source.uri
    url_ref = _url_source(owner, spec)
    if uri is None or url_ref is None:
        return None
    common = _common_path(_model_paths(spec))
    dest = f"{MODEL_MOUNT}/{common}" if common else MODEL_MOUNT
    command = [FETCH_COMMAND, "--dest", dest]
    if uri.sha256:
        command += ["--sha256", uri.sha256]
    mounts: list[dict[str, Any]] = [
        {"name": "model", "mountPath": MODEL_MOUNT},
        {"name": "tmp", "mountPath": TMP_MOUNT},
    ]
    if uri.secret_ref is not None:
        command += ["--auth-dir", AUTH_MOUNT]
        mounts.append({"name": "model-auth", "mountPath": AUTH_MOUNT, "readOnly": True})
    return {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": command,
        "env": [
            {"name": "HOME", "value": TMP_MOUNT},
            {"name": FETCH_URL_ENV, "valueFrom": {"secretKeyRef": url_ref}},
        ],
        "resources": {
            "requests": {"cpu": options.fetch_cpu_request, "memory": options.fetch_memory_request},
            "limits": {"memory": options.fetch_memory_limit},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }


def _resources(spec: BertServerSpec) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    res = spec.resources
    if res.cpu is not None:
        requests["cpu"] = res.cpu  # no CPU limit: throttling a model server only adds latency
    if res.memory is not None:
        requests["memory"] = res.memory
        limits["memory"] = res.memory
    if res.gpus > 0:
        requests[res.gpu_resource_name] = str(res.gpus)
        limits[res.gpu_resource_name] = str(res.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probes(spec: BertServerSpec) -> dict[str, Any]:
    """Startup gates on readiness (model loaded and warmed up) within the spec's budget."""
    startup_failures = max(1, -(-spec.startup_timeout_seconds // PROBE_PERIOD_SECONDS))
    return {
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": PORT_HTTP},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": startup_failures,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": PORT_HTTP},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT_HTTP},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def _tolerations(spec: BertServerSpec) -> list[dict[str, Any]]:
    out = []
    for t in spec.tolerations:
        item: dict[str, Any] = {"operator": t.operator}
        if t.key is not None:
            item["key"] = t.key
        if t.value is not None:
            item["value"] = t.value
        if t.effect is not None:
            item["effect"] = t.effect
        if t.toleration_seconds is not None:
            item["tolerationSeconds"] = t.toleration_seconds
        out.append(item)
    return out


# --------------------------------------------------------------------------- builders


def server_image_for(spec: BertServerSpec, options: RenderOptions) -> str:
    """The server image a BertServer runs: ``spec.image`` when set, else the operator's default.

    A CPU-only BertServer (``resources.gpus: 0``) gets ``default_cpu_image`` when there is one:
    it carries no CUDA wheels, which a pod without a GPU never loads but every node still pulls
    and unpacks (GBs). Without a CPU default every BertServer gets ``default_image``.
    """
    if spec.image:
        return spec.image
    if spec.resources.gpus == 0 and options.default_cpu_image:
        return options.default_cpu_image
    return options.default_image


def pod_spec(owner: Owner, spec: BertServerSpec, options: RenderOptions) -> tuple[dict[str, Any], list[str]]:
    """The pod spec and the server arguments rendered into it."""
    image = server_image_for(spec, options)
    args = server_args(server_config(owner, spec, options))
    ports = spec.serving.ports
    model_volume, model_mount = _model_volume(spec)
    prestop, _ = drain_budget(spec.termination_grace_period_seconds)
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": [SERVER_COMMAND],
        "args": args,
        "env": _env(spec),
        "ports": [
            {"name": PORT_ZMQ, "containerPort": ports.zmq, "protocol": "TCP"},
            {"name": PORT_ZMQ_OUT, "containerPort": ports.zmq_out, "protocol": "TCP"},
            {"name": PORT_HTTP, "containerPort": ports.http, "protocol": "TCP"},
            {"name": PORT_PEER, "containerPort": PEER_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(spec),
        **_probes(spec),
        "securityContext": _container_security(),
        "volumeMounts": [
            model_mount,
            {"name": "tmp", "mountPath": TMP_MOUNT},
            {"name": "peer-key", "mountPath": PEER_KEY_MOUNT, "readOnly": True},
        ],
    }
    if spec.env_from:
        container["envFrom"] = copy.deepcopy([dict(e) for e in spec.env_from])
    if prestop > 0:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": prestop}}}
    volumes: list[dict[str, Any]] = [
        model_volume,
        {"name": "tmp", "emptyDir": {"sizeLimit": options.tmp_size_limit}},
        {
            # Group-readable by the server (fsGroup), nobody else; never rotated by the operator.
            "name": "peer-key",
            "secret": {
                "secretName": peer_key_secret_name(owner.name),
                "items": [{"key": PEER_KEY_FILE, "path": PEER_KEY_FILE}],
                "defaultMode": 0o440,
            },
        },
    ]
    uri = spec.model.source.uri
    if uri is not None and uri.secret_ref is not None:
        volumes.append(
            {"name": "model-auth", "secret": {"secretName": uri.secret_ref.name, "defaultMode": 0o444}}
        )
    pod: dict[str, Any] = {
        # The server never talks to the API server, and service links would put an env var per
        # Service of the namespace into every pod.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            # Writable volumes (and a model PVC mounted read-write) become group-owned by the
            # server's group, so files a copy Job wrote as another user stay readable.
            "fsGroup": RUN_AS_USER,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    fetch = _fetch_container(owner, spec, image, options)
    if fetch is not None:
        pod["initContainers"] = [fetch]
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = _tolerations(spec)
    if spec.affinity:
        pod["affinity"] = copy.deepcopy(dict(spec.affinity))
    if spec.runtime_class_name:
        pod["runtimeClassName"] = spec.runtime_class_name
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.topology_spread_constraints:
        pod["topologySpreadConstraints"] = copy.deepcopy([dict(t) for t in spec.topology_spread_constraints])
    return pod, args


def _env(spec: BertServerSpec) -> list[dict[str, Any]]:
    """HOME, the API key by reference to its Secret (never a value, never an argument), then
    the user's variables (the parser refuses BERTSERVE_* and HOME among them)."""
    env: list[dict[str, Any]] = [{"name": "HOME", "value": TMP_MOUNT}]
    ref = spec.serving.api_key_secret
    if ref is not None:
        env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    env.extend(copy.deepcopy([dict(e) for e in spec.env]))
    return env


def pod_annotations(spec: BertServerSpec, args: list[str]) -> dict[str, str]:
    """The pod template's annotations: the config hash, plus scrape hints when asked for."""
    annotations = dict(spec.pod_annotations)
    annotations[names.ANNOTATION_CONFIG_HASH] = config_hash(args, spec.model)
    if spec.monitoring.prometheus_annotations:
        scrape, port, path = PROMETHEUS_ANNOTATIONS
        annotations.update({scrape: "true", port: str(spec.serving.ports.http), path: METRICS_PATH})
    return annotations


def deployment(owner: Owner, spec: BertServerSpec, options: RenderOptions) -> dict[str, Any]:
    """The encoder Deployment; ``replicas`` is left out while an HPA owns scaling."""
    labels = names.common_labels(owner.name)
    pod, args = pod_spec(owner, spec, options)
    dep_spec: dict[str, Any] = {}
    if not spec.autoscaling.enabled:
        dep_spec["replicas"] = spec.replicas
    dep_spec.update(
        {
            "selector": {"matchLabels": names.selector_labels(owner.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.startup_timeout_seconds
            + options.progress_deadline_margin_seconds,
            "template": {
                "metadata": {
                    "labels": {**spec.pod_labels, **labels},
                    "annotations": pod_annotations(spec, args),
                },
                "spec": pod,
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, deployment_name(owner.name), labels),
        "spec": dep_spec,
    }


def service(owner: Owner, spec: BertServerSpec) -> dict[str, Any]:
    """The Service clients connect to (requests on zmq, answers on zmq-out, HTTP).

    ClusterIP unless ``spec.service.type`` says otherwise; ``spec.service.annotations`` go on
    its metadata (cloud load balancers are configured that way).
    """
    ports = spec.serving.ports
    metadata = _metadata(owner, service_name(owner.name), names.common_labels(owner.name))
    if spec.service.annotations:
        metadata["annotations"] = dict(spec.service.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": spec.service.type,
            "selector": names.selector_labels(owner.name),
            "ports": [
                {"name": PORT_ZMQ, "port": ports.zmq, "targetPort": PORT_ZMQ, "protocol": "TCP"},
                {"name": PORT_ZMQ_OUT, "port": ports.zmq_out, "targetPort": PORT_ZMQ_OUT, "protocol": "TCP"},
                {"name": PORT_HTTP, "port": ports.http, "targetPort": PORT_HTTP, "protocol": "TCP"},
            ],
        },
    }


def peer_service(owner: Owner) -> dict[str, Any]:
    """Headless Service listing every replica, ready or not, for answer routing between pods.

    A client's request (PUSH, load-balanced) and its answer subscription (SUB, pinned to one
    pod) may land on different replicas; the replica that encoded the request forwards the
    answer to its peers over this Service. Not-ready pods are published so that a replica
    that is still warming up can already be reached by its peers.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, peer_service_name(owner.name), names.common_labels(owner.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector_labels(owner.name),
            "ports": [{"name": PORT_PEER, "port": PEER_PORT, "targetPort": PORT_PEER, "protocol": "TCP"}],
        },
    }


QUEUE_METRIC = "bertserve_queue_depth_sentences"
"""The server's gauge of sentences accepted and not yet answered (bertserve_server.metrics), which
``autoscaling.metric: queue`` scales on as a per-pod metric (a Prometheus adapter serves it
through the custom metrics API; docs/user-guide.md has the rule)."""


def hpa_metric(spec: BertServerSpec) -> dict[str, Any]:
    """The HPA's metric: CPU utilization of the request, or queued sentences per pod."""
    auto = spec.autoscaling
    if auto.metric == "queue":
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(auto.target_queued_sentences_per_pod)},
            },
        }
    return {
        "type": "Resource",
        "resource": {
            "name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": auto.target_cpu_utilization_percentage},
        },
    }


def hpa(owner: Owner, spec: BertServerSpec) -> dict[str, Any] | None:
    """autoscaling/v2 HPA on the Deployment, or ``None`` when disabled.

    CPU scaling needs a CPU request to compute utilization against; the spec parser (and the
    CRD's CEL rule) insist on ``resources.cpu`` then, which :func:`_resources` renders.
    """
    auto = spec.autoscaling
    if not auto.enabled:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, deployment_name(owner.name), names.common_labels(owner.name)),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(owner.name),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [hpa_metric(spec)],
        },
    }


def pdb(owner: Owner, spec: BertServerSpec) -> dict[str, Any] | None:
    """policy/v1 PodDisruptionBudget limiting voluntary evictions, or ``None`` when disabled."""
    if not spec.disruption_budget.enabled:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, deployment_name(owner.name), names.common_labels(owner.name)),
        "spec": {
            "maxUnavailable": spec.disruption_budget.max_unavailable,
            "selector": {"matchLabels": names.selector_labels(owner.name)},
            # A crash-looping (never ready) replica must not block node drains: evicting it
            # cannot reduce availability.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def network_policy(owner: Owner, spec: BertServerSpec, options: RenderOptions) -> dict[str, Any] | None:
    """Ingress rules for the pods, or ``None`` when switched off (in the spec or the operator).

    The peer port takes answers and gossip from the other replicas only (pods of this
    BertServer); the client ports take ``spec.network.allowedClients`` or, when that is empty,
    anyone. Egress is left alone (a ``uri`` source downloads the model).
    """
    if not (options.network_policies and spec.network.network_policy):
        return None
    ports = spec.serving.ports
    clients: dict[str, Any] = {
        "ports": [{"port": p, "protocol": "TCP"} for p in (ports.zmq, ports.zmq_out, ports.http)]
    }
    if spec.network.allowed_clients:
        clients["from"] = copy.deepcopy([dict(c) for c in spec.network.allowed_clients])
    peers = {
        "from": [{"podSelector": {"matchLabels": names.selector_labels(owner.name)}}],
        "ports": [{"port": PEER_PORT, "protocol": "TCP"}],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, network_policy_name(owner.name), names.common_labels(owner.name)),
        "spec": {
            "podSelector": {"matchLabels": names.selector_labels(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [clients, peers],
        },
    }


SERVICE_MONITOR_API_VERSION = "monitoring.coreos.com/v1"


def service_monitor(owner: Owner, spec: BertServerSpec) -> dict[str, Any] | None:
    """A Prometheus-operator ServiceMonitor scraping ``/metrics`` on the client Service's
    ``http`` port (the peer Service has no such port), or ``None`` unless asked for."""
    if not spec.monitoring.service_monitor.enabled:
        return None
    return {
        "apiVersion": SERVICE_MONITOR_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": _metadata(owner, service_name(owner.name), names.common_labels(owner.name)),
        "spec": {
            "selector": {"matchLabels": names.selector_labels(owner.name)},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": PORT_HTTP, "path": METRICS_PATH, "interval": "30s"}],
        },
    }


def peer_key_secret(owner: Owner, key: bytes) -> dict[str, Any]:
    """The Secret holding the mesh key; the caller supplies the random bytes (builders stay pure).

    Created once and never updated: a new key would split running replicas into two meshes.
    Owned by the BertServer, so it goes when the BertServer goes.
    """
    if len(key) < PEER_KEY_MIN_BYTES:
        raise ValueError(f"the peer key needs at least {PEER_KEY_MIN_BYTES} bytes, got {len(key)}")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(owner, peer_key_secret_name(owner.name), names.common_labels(owner.name)),
        "type": "Opaque",
        "immutable": True,
        "data": {PEER_KEY_FILE: base64.b64encode(key).decode("ascii")},
    }


def render(owner: Owner, spec: BertServerSpec, options: RenderOptions) -> Children:
    """Every child object of one BertServer."""
    return Children(
        deployment=deployment(owner, spec, options),
        service=service(owner, spec),
        peer_service=peer_service(owner),
        hpa=hpa(owner, spec),
        pdb=pdb(owner, spec),
        network_policy=network_policy(owner, spec, options),
        model_uri_secret=model_uri_secret(owner, spec),
        service_monitor=service_monitor(owner, spec),
    )
