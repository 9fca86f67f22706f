"""API coordinates, label keys and child object names.

Why it exists: the CRD, the operator, the chart and the tests must agree on every name; a
child name that grows past 63 characters (the DNS label limit that Services and label values
impose) only fails at apply time, in production. Names here are computed, checked and unique.
"""

from __future__ import annotations

import hashlib
import re

from bertserve_api import __version__

GROUP = "bertserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BertServer"
PLURAL = "bertservers"
SINGULAR = "bertserver"
SHORT_NAMES = ("bertsrv",)
CRD_NAME = f"{PLURAL}.{GROUP}"

FIELD_MANAGER = "bertserve-operator"
"""The one server-side-apply field manager the operator writes children with."""

# Recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_VERSION = "app.kubernetes.io/version"

APP_NAME = "bertserve"
MANAGED_BY = "bertserve-operator"
COMPONENT_ENCODER = "encoder"
COMPONENT_GATEWAY = "gateway"

SERVER_IMAGE_REPOSITORY = "localhost/bertserve-server"
OPERATOR_IMAGE_REPOSITORY = "localhost/bertserve-operator"
"""What ``make images`` (hack/images/build.sh) tags; push them to your registry and point the chart
at the pushed names (``serverImage``, ``image.repository``). The chart's defaults are these, so a
cluster whose nodes were given the built archives (``ctr images import``) runs without a registry."""

DEFAULT_SERVER_IMAGE = f"{SERVER_IMAGE_REPOSITORY}:{__version__}"
"""The server image for BertServers without ``spec.image``: the operator's default and the one
``bertserve render`` shows (the chart passes its ``serverImage`` to the operator instead)."""

DEFAULT_SERVER_CPU_IMAGE = f"{SERVER_IMAGE_REPOSITORY}:{__version__}-cpu"
"""The server image for BertServers with ``resources.gpus: 0`` and without ``spec.image``: the same
server built on TensorFlow's CPU-only package, without the CUDA wheels (about a fifth of the
GPU image's size, so a CPU node pulls and imports it faster). The chart passes ``serverCpuImage``."""

ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
"""Pod-template annotation: hash of the rendered config + model revision (rolls pods on change)."""

GPU_RESOURCE = "nvidia.com/gpu"

MAX_NAME_LENGTH = 63
_HASH_LENGTH = 8
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_dns_label(name: str) -> bool:
    """True when ``name`` is a valid RFC 1123 label (what Service names must be)."""
    return len(name) <= MAX_NAME_LENGTH and bool(_DNS_LABEL.match(name))


def child_name(owner: str, suffix: str = "") -> str:
    """Name of a child object of BertServer ``owner``: ``<owner>[-<suffix>]``, at most 63 chars.

    When the plain name would be too long, the owner part is cut and a short hash of the full
    name is appended, so two long owners that share a prefix still get different children, and
    the same owner always gets the same name (fixed names keep reconciliation idempotent).
    """
    full = f"{owner}-{suffix}" if suffix else owner
    if len(full) <= MAX_NAME_LENGTH:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_LENGTH]
    tail = f"-{suffix}-{digest}" if suffix else f"-{digest}"
    head = owner[: MAX_NAME_LENGTH - len(tail)].rstrip("-.")
    return f"{head}{tail}"


def selector_labels(instance: str, component: str = COMPONENT_ENCODER) -> dict[str, str]:
    """Labels that select one BertServer's pods of one component (immutable once applied)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: label_value(instance),
        LABEL_COMPONENT: component,
    }


def common_labels(
    instance: str, component: str = COMPONENT_ENCODER, version: str | None = None
) -> dict[str, str]:
    """Selector labels plus ownership labels, for every child object."""
    labels = {**selector_labels(instance, component), LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: APP_NAME}
    if version:
        labels[LABEL_VERSION] = label_value(version)
    return labels


def label_value(value: str) -> str:
    """A label value (<= 63 chars, alphanumeric at both ends), shortened with a hash when needed."""
    if len(value) <= MAX_NAME_LENGTH:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{value[: MAX_NAME_LENGTH - _HASH_LENGTH - 1].rstrip('-_.')}-{digest}"


def selector_string(labels: dict[str, str]) -> str:
    """``k=v,k=v`` form of a label selector (what ``status.selector`` holds for the HPA)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
