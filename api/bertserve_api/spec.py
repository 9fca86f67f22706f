"""The BertServer spec as typed, immutable values, and the one parser that produces them.

Why it exists: the API server's schema catches shapes and ranges, but not every rule (a
checkpoint *prefix* versus a file path, ports that collide, a GPU flag without GPUs). The
operator, the ``bertserve render`` CLI and the tests all go through :func:`parse_spec`, which
applies the defaults (equal to the CRD's ``default:`` values, checked by a test), checks the
cross-field rules and raises :class:`SpecError` naming the exact field path, e.g.
``spec.serving.maxSeqLen: 1024 exceeds 512``.

Standard library only, no I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from bertserve_api.contract import PoolingStrategy
from bertserve_api.names import GPU_RESOURCE

MAX_SEQ_LEN_LIMIT = 512
"""Upper bound for ``maxSeqLen``: BERT checkpoints have at most 512 position embeddings."""

# Patterns the CRD carries verbatim (tests/api/test_crd.py checks each CRD pattern is one of
# these), so the API server and this parser refuse the same strings.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
PERCENT_PATTERN = r"^(100|[1-9]?[0-9])%$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A BertServer name: an RFC 1035 label (its Service needs a letter first and no dots)."""
PEER_SUFFIX_PATTERN = r"-peers(-[0-9a-f]{8})?$"
"""Names the peer Service of another BertServer takes (``names.child_name(x, "peers")``)."""

RESOURCE_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
"""An extended resource name such as ``nvidia.com/gpu`` or ``nvidia.com/mig-1g.10gb``."""
DEFAULT_GPU_RESOURCE = GPU_RESOURCE
RESERVED_ENV_PREFIX = "BERTSERVE_"
"""Environment names the operator sets (``BERTSERVE_API_KEY``...); ``spec.env`` may not."""
RESERVED_ENV = ("HOME",)
RESERVED_LABEL_PREFIX = "app.kubernetes.io/"
"""Pod label keys the operator owns (the Deployment's selector is made of them)."""

_QUANTITY = re.compile(QUANTITY_PATTERN)
_PERCENT = re.compile(PERCENT_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_CKPT_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")


class SpecError(ValueError):
    """An invalid BertServer spec: ``path`` is the field (``spec.serving.maxSeqLen``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _camel(name: str) -> str:
    special = {"target_cpu_utilization_percentage": "targetCPUUtilizationPercentage"}
    if name in special:
        return special[name]
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class PvcSource:
    claim_name: str
    read_only: bool = True


@dataclass(frozen=True)
class HostPathSource:
    path: str
    type: str = "Directory"


@dataclass(frozen=True)
class SecretRef:
    name: str


@dataclass(frozen=True)
class UriSource:
    """An archive (``.zip``/``.tar.gz``/``.tgz``) or a single file fetched by an init container.

    ``url`` ``None``: the URL is the ``url`` key of the ``secret_ref`` Secret (a pre-signed URL
    is a credential and stays out of the spec).
    """

    url: str | None
    sha256: str | None = None
    secret_ref: SecretRef | None = None
    size_limit: str = "20Gi"


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of the three is set."""

    pvc: PvcSource | None = None
    host_path: HostPathSource | None = None
    uri: UriSource | None = None

    @property
    def kind(self) -> str:
        """``pvc``, ``hostPath`` or ``uri``."""
        if self.pvc is not None:
            return "pvc"
        if self.host_path is not None:
            return "hostPath"
        return "uri"


@dataclass(frozen=True)
class ModelSpec:
    source: ModelSource
    pretrained_path: str
    tuned_model_dir: str | None = None
    ckpt_name: str = "bert_model.ckpt"
    config_name: str = "bert_config.json"
    revision: str = "1"


@dataclass(frozen=True)
class Ports:
    zmq: int = 5555
    zmq_out: int = 5556
    http: int = 8125


#: Most labels ``serving.classifier.labels`` takes (the CRD's ``maxItems`` and the server's limit).
MAX_CLASSIFIER_LABELS = 64
#: Longest label name (the CRD's ``maxLength``).
MAX_LABEL_LENGTH = 128


@dataclass(frozen=True)
class ClassifierSpec:
    """``serving.classifier``: serve the checkpoint's ``run_classifier.py`` head at ``/predict``.

    ``labels`` names the head's outputs in order (``-classifier_labels``); empty means the
    server's default ``0..n-1``.
    """

    enabled: bool = False
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServingSpec:
    """Per-pod ``bert-serving-start`` options (camelCase of the flags; same defaults)."""

    max_seq_len: int | None = 25
    pooling_strategy: PoolingStrategy = PoolingStrategy.REDUCE_MEAN
    pooling_layer: tuple[int, ...] = (-2,)
    max_batch_size: int = 256
    priority_batch_size: int = 16
    cased_tokenization: bool = False
    mask_cls_sep: bool = False
    no_special_token: bool = False
    show_tokens_to_client: bool = False
    no_position_embeddings: bool = False
    fixed_embed_length: bool = False
    fp16: bool = False
    xla: bool = False
    size_classes: bool = True
    num_worker: int | None = None
    gpu_memory_fraction: float = 0.5
    prefetch_size: int = 10
    http_max_connect: int = 10
    cors: str = "*"
    verbose: bool = False
    max_queue_size: int = 10000
    max_wait_ms: float = 2.0
    enable_termination: bool = False
    ports: Ports = field(default_factory=Ports)
    api_key_secret: SecretKeyRef | None = None

    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)


@dataclass(frozen=True)
class Resources:
    gpus: int = 1
    cpu: str | None = None
    memory: str | None = None
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


AUTOSCALING_METRICS = ("cpu", "queue")
"""``cpu``: utilization of the CPU request; ``queue``: the server's queued sentences per pod."""


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 4
    target_cpu_utilization_percentage: int = 80
    metric: str = "cpu"
    target_queued_sentences_per_pod: int = 128


@dataclass(frozen=True)
class Rollout:
    max_surge: int | str = 0
    max_unavailable: int | str = 1


@dataclass(frozen=True)
class DisruptionBudget:
    enabled: bool = False
    max_unavailable: int | str = 1


SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
"""Types ``spec.service.type`` may take; ClusterIP keeps the encoder inside the cluster."""


@dataclass(frozen=True)
class ServiceSpec:
    """The client Service: its type and extra annotations (e.g. a cloud load balancer's).

    The peer Service is always headless and cluster-internal; only this one can be exposed.
    """

    type: str = "ClusterIP"
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceMonitorSpec:
    enabled: bool = False


@dataclass(frozen=True)
class Monitoring:
    """Scrape discovery for the pods' ``/metrics`` (on the HTTP port).

    ``service_monitor``: a Prometheus-operator ServiceMonitor, made only where its CRD is served.
    """

    prometheus_annotations: bool = False
    service_monitor: ServiceMonitorSpec = field(default_factory=ServiceMonitorSpec)


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Secret in the BertServer's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class Network:
    """Who may connect: a NetworkPolicy per BertServer (on unless switched off here or in the chart).

    The peer port admits only pods of the same BertServer; the client ports admit
    ``allowed_clients`` (NetworkPolicyPeers, passed through unchanged) or, when empty, anyone.
    """

    network_policy: bool = True
    allowed_clients: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class BertServerSpec:
    model: ModelSpec
    serving: ServingSpec = field(default_factory=ServingSpec)
    replicas: int = 1
    resources: Resources = field(default_factory=Resources)
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: Mapping[str, Any] | None = None
    runtime_class_name: str | None = None
    priority_class_name: str | None = None
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    rollout: Rollout = field(default_factory=Rollout)
    disruption_budget: DisruptionBudget = field(default_factory=DisruptionBudget)
    startup_timeout_seconds: int = 900
    termination_grace_period_seconds: int = 60
    service: ServiceSpec = field(default_factory=ServiceSpec)
    monitoring: Monitoring = field(default_factory=Monitoring)
    network: Network = field(default_factory=Network)
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = ()
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    env_from: tuple[Mapping[str, Any], ...] = ()

    @property
    def workers(self) -> int:
        """Model workers per pod: as given, else one per GPU (one on CPU)."""
        if self.serving.num_worker is not None:
            return self.serving.num_worker
        return max(1, self.resources.gpus)


# --------------------------------------------------------------------------- reading


class _Reader:
    """Typed access to one mapping of the raw spec, tracking the field path for errors."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"must be an object, got {type(raw).__name__}")
        self.raw = raw
        self.path = path
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.raw.get(key)

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise SpecError(self.at(unknown[0]), "unknown field")

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.get(key)
        if value is None:
            if required:
                raise SpecError(self.at(key), "is required")
            return default
        if not isinstance(value, str):
            raise SpecError(self.at(key), f"must be a string, got {value!r}")
        if required and not value.strip():
            raise SpecError(self.at(key), "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be true or false, got {value!r}")
        return value

    def integer(
        self, key: str, default: Any, *, minimum: int | None = None, maximum: int | None = None
    ) -> Any:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.at(key), f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise SpecError(self.at(key), f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise SpecError(self.at(key), f"{value} exceeds {maximum}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(self.at(key), f"must be a number, got {value!r}")
        if not minimum <= value <= maximum:
            raise SpecError(self.at(key), f"{value} must be between {minimum} and {maximum}")
        return float(value)

    def int_or_percent(self, key: str, default: int | str) -> int | str:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            raise SpecError(self.at(key), f"must be an integer or a percentage, got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise SpecError(self.at(key), f"{value} must not be negative")
            return value
        if isinstance(value, str) and _PERCENT.match(value):
            return value
        raise SpecError(
            self.at(key), f"must be an integer or a percentage from 0% to 100% like '25%', got {value!r}"
        )

    def quantity(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _QUANTITY.match(value):
            raise SpecError(self.at(key), f"{value!r} is not a Kubernetes quantity (e.g. 8Gi, 500m)")
        return value

    def child(self, key: str) -> _Reader:
        return _Reader(self.get(key), self.at(key))


def _relative_path(reader: _Reader, key: str, *, required: bool) -> str | None:
    value = reader.string(key, required=required)
    if value is None:
        return None
    path = value.strip().rstrip("/")
    if path.startswith("/"):
        raise SpecError(reader.at(key), f"must be relative to the model source, got {value!r}")
    if any(part == ".." for part in path.split("/")):
        raise SpecError(reader.at(key), f"must not contain '..', got {value!r}")
    return path or "."


def _parse_source(reader: _Reader) -> ModelSource:
    given = [k for k in ("pvc", "hostPath", "uri") if reader.has(k)]
    if len(given) != 1:
        raise SpecError(
            reader.path, f"exactly one of pvc, hostPath or uri must be set (got {', '.join(given) or 'none'})"
        )
    pvc = host_path = uri = None
    if reader.has("pvc"):
        r = reader.child("pvc")
        pvc = PvcSource(r.string("claimName", required=True), r.boolean("readOnly", True))
        r.done()
    if reader.has("hostPath"):
        r = reader.child("hostPath")
        path = r.string("path", required=True)
        if not path.startswith("/"):
            raise SpecError(r.at("path"), f"must be an absolute path, got {path!r}")
        host_path = HostPathSource(path, r.string("type", "Directory"))
        r.done()
    if reader.has("uri"):
        r = reader.child("uri")
        url = r.string("url", required=not r.has("secretRef"))
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise SpecError(r.at("url"), f"must be an http:// or https:// URL, got {url!r}")
        sha = r.string("sha256")
        if sha is not None and not _SHA256.match(sha.lower()):
            raise SpecError(r.at("sha256"), "must be 64 hexadecimal characters")
        secret = None
        if r.has("secretRef"):
            sr = r.child("secretRef")
            secret = SecretRef(sr.string("name", required=True))
            sr.done()
        size = r.quantity("sizeLimit") or "20Gi"
        uri = UriSource(url, sha.lower() if sha else None, secret, size)
        r.done()
    for key in ("pvc", "hostPath", "uri"):
        reader.seen.add(key)
    reader.done()
    return ModelSource(pvc, host_path, uri)


def _parse_model(reader: _Reader) -> ModelSpec:
    source = _parse_source(reader.child("source"))
    pretrained = _relative_path(reader, "pretrainedPath", required=True)
    tuned = _relative_path(reader, "tunedModelDir", required=False)
    ckpt = reader.string("ckptName", "bert_model.ckpt")
    if "/" in ckpt or _CKPT_FILE_SUFFIX.search(ckpt):
        raise SpecError(
            reader.at("ckptName"),
            f"must be a checkpoint prefix, not a path (e.g. model.ckpt-343), got {ckpt!r}",
        )
    config_name = reader.string("configName", "bert_config.json")
    if "/" in config_name:
        raise SpecError(
            reader.at("configName"), f"must be a file name inside pretrainedPath, got {config_name!r}"
        )
    revision = reader.get("revision")
    if revision is None:
        revision = "1"
    elif isinstance(revision, int) and not isinstance(revision, bool):
        revision = str(revision)
    elif not isinstance(revision, str):
        raise SpecError(reader.at("revision"), f"must be a string, got {revision!r}")
    reader.done()
    assert pretrained is not None
    return ModelSpec(source, pretrained, tuned, ckpt, config_name, revision)


def _parse_classifier(reader: _Reader) -> ClassifierSpec:
    enabled = reader.boolean("enabled", False)
    raw = reader.get("labels")
    labels: tuple[str, ...] = ()
    if raw is not None:
        path = reader.at("labels")
        if not isinstance(raw, list) or not raw:
            raise SpecError(path, "must be a non-empty list of label names (leave it out for 0..n-1)")
        if len(raw) > MAX_CLASSIFIER_LABELS:
            raise SpecError(path, f"has {len(raw)} labels; at most {MAX_CLASSIFIER_LABELS}")
        for i, label in enumerate(raw):
            if not isinstance(label, str) or not label.strip():
                raise SpecError(f"{path}[{i}]", f"must be a non-empty string, got {label!r}")
            if len(label) > MAX_LABEL_LENGTH:
                raise SpecError(
                    f"{path}[{i}]", f"is {len(label)} characters long; at most {MAX_LABEL_LENGTH}"
                )
            if "," in label or label != label.strip():
                raise SpecError(
                    f"{path}[{i}]", f"{label!r} must not contain commas or start or end with spaces"
                )
        duplicates = sorted({label for label in raw if raw.count(label) > 1})
        if duplicates:
            raise SpecError(path, f"names {', '.join(duplicates)} more than once; labels must be unique")
        labels = tuple(raw)
    reader.done()
    return ClassifierSpec(enabled=enabled, labels=labels)


def _parse_serving(reader: _Reader) -> ServingSpec:
    d = ServingSpec()
    max_seq_len: int | None
    if "maxSeqLen" in reader.raw and reader.raw["maxSeqLen"] is None:
        reader.seen.add("maxSeqLen")
        max_seq_len = None
    else:
        max_seq_len = reader.integer("maxSeqLen", d.max_seq_len, minimum=4, maximum=MAX_SEQ_LEN_LIMIT)
    strategy_name = reader.string("poolingStrategy", d.pooling_strategy.name)
    try:
        strategy = PoolingStrategy.from_string(strategy_name)
    except ValueError as exc:
        raise SpecError(reader.at("poolingStrategy"), str(exc)) from None
    layers_raw = reader.get("poolingLayer")
    if layers_raw is None:
        layers = d.pooling_layer
    else:
        if not isinstance(layers_raw, list) or not layers_raw:
            raise SpecError(reader.at("poolingLayer"), "must be a non-empty list of integers")
        for i, v in enumerate(layers_raw):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpecError(f"{reader.at('poolingLayer')}[{i}]", f"must be an integer, got {v!r}")
        layers = tuple(layers_raw)
    ports_reader = reader.child("ports")
    ports = Ports(
        ports_reader.integer("zmq", 5555, minimum=1, maximum=65535),
        ports_reader.integer("zmqOut", 5556, minimum=1, maximum=65535),
        ports_reader.integer("http", 8125, minimum=1, maximum=65535),
    )
    ports_reader.done()
    if len({ports.zmq, ports.zmq_out, ports.http}) != 3:
        raise SpecError(ports_reader.path, f"zmq, zmqOut and http must differ, got {ports}")
    max_batch = reader.integer("maxBatchSize", d.max_batch_size, minimum=1, maximum=65536)
    spec = ServingSpec(
        max_seq_len=max_seq_len,
        pooling_strategy=strategy,
        pooling_layer=layers,
        max_batch_size=max_batch,
        priority_batch_size=reader.integer("priorityBatchSize", d.priority_batch_size, minimum=0),
        cased_tokenization=reader.boolean("casedTokenization", d.cased_tokenization),
        mask_cls_sep=reader.boolean("maskClsSep", d.mask_cls_sep),
        no_special_token=reader.boolean("noSpecialToken", d.no_special_token),
        show_tokens_to_client=reader.boolean("showTokensToClient", d.show_tokens_to_client),
        no_position_embeddings=reader.boolean("noPositionEmbeddings", d.no_position_embeddings),
        fixed_embed_length=reader.boolean("fixedEmbedLength", d.fixed_embed_length),
        fp16=reader.boolean("fp16", d.fp16),
        xla=reader.boolean("xla", d.xla),
        size_classes=reader.boolean("sizeClasses", d.size_classes),
        num_worker=reader.integer("numWorker", None, minimum=1, maximum=64),
        gpu_memory_fraction=reader.number(
            "gpuMemoryFraction", d.gpu_memory_fraction, minimum=0.01, maximum=1.0
        ),
        prefetch_size=reader.integer("prefetchSize", d.prefetch_size, minimum=0),
        http_max_connect=reader.integer("httpMaxConnect", d.http_max_connect, minimum=1),
        cors=reader.string("cors", d.cors),
        verbose=reader.boolean("verbose", d.verbose),
        max_queue_size=reader.integer("maxQueueSize", d.max_queue_size, minimum=1),
        max_wait_ms=reader.number("maxWaitMs", d.max_wait_ms, minimum=0.0, maximum=10000.0),
        enable_termination=reader.boolean("enableTermination", d.enable_termination),
        ports=ports,
        api_key_secret=_secret_key_ref(reader, "apiKeySecret"),
        classifier=_parse_classifier(reader.child("classifier")),
    )
    if spec.max_queue_size < spec.max_batch_size:
        raise SpecError(
            reader.at("maxQueueSize"),
            f"{spec.max_queue_size} is smaller than maxBatchSize {spec.max_batch_size}",
        )
    reader.done()
    return spec


def _parse_tolerations(raw: Any, path: str) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(path, "must be a list")
    out = []
    for i, item in enumerate(raw):
        r = _Reader(item, f"{path}[{i}]")
        op = r.string("operator", "Equal")
        if op not in ("Equal", "Exists"):
            raise SpecError(r.at("operator"), f"must be Equal or Exists, got {op!r}")
        effect = r.string("effect")
        if effect not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SpecError(
                r.at("effect"), f"must be NoSchedule, PreferNoSchedule or NoExecute, got {effect!r}"
            )
        value = r.string("value")
        if op == "Exists" and value:
            raise SpecError(r.at("value"), f"must be empty when operator is Exists, got {value!r}")
        seconds = r.integer("tolerationSeconds", None)
        if seconds is not None and effect != "NoExecute":
            raise SpecError(r.at("tolerationSeconds"), f"needs effect NoExecute, got {effect!r}")
        out.append(Toleration(r.string("key"), op, value, effect, seconds))
        r.done()
    return tuple(out)


def _string_map(raw: Any, path: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise SpecError(path, "must be a map of strings to strings")
    return dict(raw)


def _optional_name(reader: _Reader, key: str) -> str | None:
    value: str | None = reader.string(key)
    if value is not None and not _DNS_SUBDOMAIN.match(value):
        raise SpecError(reader.at(key), f"{value!r} is not a valid object name")
    return value


def check_name(name: str) -> None:
    """Refuse a BertServer name its children cannot carry (the CRD refuses the same names).

    The Service takes the name itself, so it must be an RFC 1035 label (``1bert`` and
    ``my.bert`` make a Deployment but no Service); ``<name>-peers`` is the name of the peer
    Service, so a BertServer called ``x-peers`` would fight ``x`` over it.
    """
    if not re.match(NAME_PATTERN, name):
        raise SpecError(
            "metadata.name",
            f"{name!r} must start with a lower-case letter and hold only lower-case letters, "
            "digits and '-' (it becomes a Service name)",
        )
    if re.search(PEER_SUFFIX_PATTERN, name):
        raise SpecError(
            "metadata.name", f"{name!r} must not end in '-peers' (the peer Service of another BertServer)"
        )


def _parse_service(reader: _Reader) -> ServiceSpec:
    service_type = reader.string("type", "ClusterIP")
    if service_type not in SERVICE_TYPES:
        raise SpecError(reader.at("type"), f"must be one of {', '.join(SERVICE_TYPES)}, got {service_type!r}")
    annotations = _string_map(reader.get("annotations"), reader.at("annotations"))
    reader.done()
    return ServiceSpec(service_type, annotations)


def _parse_monitoring(reader: _Reader) -> Monitoring:
    sm = reader.child("serviceMonitor")
    service_monitor = ServiceMonitorSpec(sm.boolean("enabled", False))
    sm.done()
    monitoring = Monitoring(reader.boolean("prometheusAnnotations", False), service_monitor)
    reader.done()
    return monitoring


def _secret_key_ref(reader: _Reader, key: str) -> SecretKeyRef | None:
    if not reader.has(key):
        reader.seen.add(key)
        return None
    r = reader.child(key)
    ref = SecretKeyRef(r.string("name", required=True), r.string("key", required=True))
    r.done()
    if not _DNS_SUBDOMAIN.match(ref.name):
        raise SpecError(r.at("name"), f"{ref.name!r} is not a valid Secret name")
    return ref


def _objects(reader: _Reader, key: str) -> tuple[Mapping[str, Any], ...]:
    """A list of Kubernetes objects passed to the pod unchanged (the API server checks them)."""
    raw = reader.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
        raise SpecError(reader.at(key), "must be a list of objects")
    return tuple(copy.deepcopy(dict(item)) for item in raw)


def _parse_network(reader: _Reader) -> Network:
    network = Network(reader.boolean("networkPolicy", True), _objects(reader, "allowedClients"))
    reader.done()
    return network


def _gpu_resource_name(reader: _Reader) -> str:
    value: str = reader.string("gpuResourceName", DEFAULT_GPU_RESOURCE)
    if not re.match(RESOURCE_NAME_PATTERN, value) or "/" not in value:
        raise SpecError(
            reader.at("gpuResourceName"),
            f"{value!r} is not an extended resource name like nvidia.com/gpu or nvidia.com/mig-1g.10gb",
        )
    return value


def _pod_labels(reader: _Reader) -> dict[str, str]:
    labels = _string_map(reader.get("podLabels"), reader.at("podLabels"))
    for key in labels:
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise SpecError(
                f"{reader.at('podLabels')}.{key}",
                f"keys under {RESERVED_LABEL_PREFIX} are set by the operator (they select the pods)",
            )
    return labels


def _env(reader: _Reader) -> tuple[Mapping[str, Any], ...]:
    env = _objects(reader, "env")
    for i, item in enumerate(env):
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f"{reader.at('env')}[{i}].name", "is required")
        if name.startswith(RESERVED_ENV_PREFIX) or name in RESERVED_ENV:
            raise SpecError(
                f"{reader.at('env')}[{i}].name",
                f"{name!r} is set by the operator ({RESERVED_ENV_PREFIX}* and HOME are reserved)",
            )
    return env


def parse_spec(raw: Mapping[str, Any] | None, path: str = "spec") -> BertServerSpec:
    """Validate ``raw`` (the ``spec`` object of a BertServer) and apply every default.

    Raises :class:`SpecError` for the first problem found, naming its field path.
    """
    top = _Reader(raw, path)
    if not top.has("model"):
        raise SpecError(top.at("model"), "is required")
    model = _parse_model(top.child("model"))
    serving = _parse_serving(top.child("serving"))
    res_reader = top.child("resources")
    resources = Resources(
        res_reader.integer("gpus", 1, minimum=0, maximum=16),
        res_reader.quantity("cpu"),
        res_reader.quantity("memory"),
        _gpu_resource_name(res_reader),
    )
    res_reader.done()
    auto_reader = top.child("autoscaling")
    autoscaling = Autoscaling(
        auto_reader.boolean("enabled", False),
        auto_reader.integer("minReplicas", 1, minimum=1),
        auto_reader.integer("maxReplicas", 4, minimum=1),
        auto_reader.integer("targetCPUUtilizationPercentage", 80, minimum=1, maximum=100),
        auto_reader.string("metric", "cpu"),
        auto_reader.integer("targetQueuedSentencesPerPod", 128, minimum=1),
    )
    auto_reader.done()
    if autoscaling.metric not in AUTOSCALING_METRICS:
        raise SpecError(
            auto_reader.at("metric"),
            f"expected one of {', '.join(AUTOSCALING_METRICS)}, got {autoscaling.metric!r}",
        )
    if autoscaling.min_replicas > autoscaling.max_replicas:
        raise SpecError(
            auto_reader.at("minReplicas"),
            f"{autoscaling.min_replicas} is greater than maxReplicas {autoscaling.max_replicas}",
        )
    if autoscaling.enabled and autoscaling.metric == "cpu" and resources.cpu is None:
        raise SpecError(
            auto_reader.at("metric"),
            "cpu scaling needs resources.cpu (the HPA measures utilization against the CPU request)",
        )
    roll_reader = top.child("rollout")
    rollout = Rollout(
        roll_reader.int_or_percent("maxSurge", 0), roll_reader.int_or_percent("maxUnavailable", 1)
    )
    roll_reader.done()
    if rollout.max_surge in (0, "0%") and rollout.max_unavailable in (0, "0%"):
        raise SpecError(roll_reader.path, "maxSurge and maxUnavailable cannot both be 0")
    pdb_reader = top.child("disruptionBudget")
    pdb = DisruptionBudget(
        pdb_reader.boolean("enabled", False), pdb_reader.int_or_percent("maxUnavailable", 1)
    )
    pdb_reader.done()
    if serving.fp16 and resources.gpus == 0:
        raise SpecError(f"{path}.serving.fp16", "needs resources.gpus > 0 (half precision is a GPU feature)")
    if serving.num_worker is not None and resources.gpus > 0 and serving.num_worker > resources.gpus:
        raise SpecError(
            f"{path}.serving.numWorker",
            f"{serving.num_worker} workers need one GPU each but resources.gpus is {resources.gpus}",
        )
    secrets_raw = top.get("imagePullSecrets") or []
    if not isinstance(secrets_raw, list):
        raise SpecError(top.at("imagePullSecrets"), "must be a list")
    pull_secrets = []
    for i, item in enumerate(secrets_raw):
        r = _Reader(item, f"{top.at('imagePullSecrets')}[{i}]")
        pull_secrets.append(r.string("name", required=True))
        r.done()
    affinity = top.get("affinity")
    if affinity is not None and not isinstance(affinity, Mapping):
        raise SpecError(top.at("affinity"), "must be an object")
    pull_policy = top.string("imagePullPolicy", "IfNotPresent")
    if pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise SpecError(
            top.at("imagePullPolicy"), f"must be Always, IfNotPresent or Never, got {pull_policy!r}"
        )
    spec = BertServerSpec(
        model=model,
        serving=serving,
        replicas=top.integer("replicas", 1, minimum=0),
        resources=resources,
        image=top.string("image"),
        image_pull_policy=pull_policy,
        image_pull_secrets=tuple(pull_secrets),
        service_account_name=_optional_name(top, "serviceAccountName"),
        node_selector=_string_map(top.get("nodeSelector"), top.at("nodeSelector")),
        tolerations=_parse_tolerations(top.get("tolerations"), top.at("tolerations")),
        affinity=dict(affinity) if affinity is not None else None,
        runtime_class_name=_optional_name(top, "runtimeClassName"),
        priority_class_name=_optional_name(top, "priorityClassName"),
        autoscaling=autoscaling,
        rollout=rollout,
        disruption_budget=pdb,
        startup_timeout_seconds=top.integer("startupTimeoutSeconds", 900, minimum=30, maximum=86400),
        termination_grace_period_seconds=top.integer(
            "terminationGracePeriodSeconds", 60, minimum=1, maximum=3600
        ),
        service=_parse_service(top.child("service")),
        monitoring=_parse_monitoring(top.child("monitoring")),
        network=_parse_network(top.child("network")),
        topology_spread_constraints=_objects(top, "topologySpreadConstraints"),
        pod_labels=_pod_labels(top),
        pod_annotations=_string_map(top.get("podAnnotations"), top.at("podAnnotations")),
        env=_env(top),
        env_from=_objects(top, "envFrom"),
    )
    top.done()
    return spec


# --------------------------------------------------------------------------- writing


def to_dict(value: Any) -> Any:
    """The camelCase JSON form of a spec value, every default filled in (what the CRD defaults to).

    ``None`` fields are left out, as the API server leaves out unset optional fields.
    """
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if item is None:
                continue
            if (
                isinstance(value, BertServerSpec | ServiceSpec | Network | ClassifierSpec)
                and isinstance(item, tuple | Mapping)
                and not item
            ):
                continue  # empty optional lists/maps are absent in the API object too
            if isinstance(value, ServingSpec) and f.name == "num_worker":
                out["numWorker"] = item
                continue
            out[_camel(f.name)] = to_dict(item)
        if isinstance(value, ServingSpec) and value.max_seq_len is None:
            out["maxSeqLen"] = None
        if isinstance(value, BertServerSpec) and value.image_pull_secrets:
            out["imagePullSecrets"] = [{"name": n} for n in value.image_pull_secrets]
        return out
    if isinstance(value, PoolingStrategy):
        return value.name
    if isinstance(value, tuple):
        return [to_dict(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_dict(v) for k, v in value.items()}
    return value
