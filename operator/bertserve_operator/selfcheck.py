"""``python -m bertserve_operator.selfcheck``: is this operator able to work here?

Why it exists: the chart's ``helm test`` hook runs it as the operator's ServiceAccount, and the
end-to-end tests run it with the same credentials. It checks that the BertServer API is served
and asks the API server (SelfSubjectAccessReview, allowed to every authenticated user) about
each permission the operator needs, naming any that is missing — far clearer than a 403 buried
in the operator log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bertserve_api import names
from bertserve_operator.kube import Kube, TemporaryApiError

# (API group, resource, verb): what the reconcile and kopf use. The chart grants exactly these
# (tests compare this table with the rendered RBAC).
REQUIRED: tuple[tuple[str, str, str], ...] = (
    *((names.GROUP, names.PLURAL, v) for v in ("get", "list", "watch", "patch")),
    *((names.GROUP, f"{names.PLURAL}/status", v) for v in ("get", "patch")),
    # blockOwnerDeletion on the children's ownerReference (OwnerReferencesPermissionEnforcement).
    (names.GROUP, f"{names.PLURAL}/finalizers", "update"),
    *(("apps", "deployments", v) for v in ("get", "list", "watch", "create", "patch")),
    *(("", "services", v) for v in ("get", "list", "watch", "create", "patch")),
    *(
        ("autoscaling", "horizontalpodautoscalers", v)
        for v in ("get", "list", "watch", "create", "patch", "delete")
    ),
    *(("policy", "poddisruptionbudgets", v) for v in ("get", "list", "watch", "create", "patch", "delete")),
    *(("", "pods", v) for v in ("get", "list", "watch")),
    *(
        ("networking.k8s.io", "networkpolicies", v)
        for v in ("get", "list", "watch", "create", "patch", "delete")
    ),
    # Create only: the mesh key Secret is made once and never read, listed or changed, so the
    # operator holds no right to read any Secret (RBAC cannot narrow Secrets by name pattern).
    ("", "secrets", "create"),
    # Optional: only used where the Prometheus operator's CRD is served.
    *(("monitoring.coreos.com", "servicemonitors", v) for v in ("get", "create", "patch", "delete")),
    ("", "events", "create"),
    ("", "events", "list"),  # why a pod is stuck creating (FailedMount, FailedAttachVolume)
)


def _allowed(kube: Kube, group: str, resource: str, verb: str, namespace: str) -> bool:
    plural, _, sub = resource.partition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "group": group,
                "resource": plural,
                "subresource": sub,
                "verb": verb,
                "namespace": namespace,
            }
        },
    }
    result = kube.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body=review,
        content_type="application/json",
    )
    return bool((result or {}).get("status", {}).get("allowed"))


def check(kube: Kube, namespaces: Sequence[str]) -> list[str]:
    """Problems found (empty when the operator can work in ``namespaces``; ``[""]`` = all)."""
    problems: list[str] = []
    discovery = kube.request("GET", f"/apis/{names.API_VERSION}", not_found_ok=True)
    served = {r.get("name") for r in (discovery or {}).get("resources", [])}
    if names.PLURAL not in served:
        problems.append(f"{names.API_VERSION} {names.PLURAL} is not served: install the CRD (crds/)")
    for namespace in namespaces:
        where = f"namespace {namespace}" if namespace else "all namespaces"
        for group, resource, verb in REQUIRED:
            if not _allowed(kube, group, resource, verb, namespace):
                problems.append(f"cannot {verb} {resource}{'.' + group if group else ''} in {where}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertserve_operator.selfcheck", description=__doc__)
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="namespace to check (repeatable)"
    )
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="check cluster-wide permissions")
    args = parser.parse_args(argv)
    namespaces = [""] if args.all_namespaces or not args.namespace else args.namespace
    kube = Kube.from_environment()
    try:
        problems = check(kube, namespaces)
    except TemporaryApiError as exc:
        print(f"selfcheck: API server not reachable: {exc}", file=sys.stderr)
        return 2
    finally:
        kube.close()
    for problem in problems:
        print(f"selfcheck: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"selfcheck: ok ({len(REQUIRED)} permissions in {', '.join(n or 'all namespaces' for n in namespaces)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
