#!/usr/bin/env bash
# System packages the tests need, from Debian's registry (idempotent; quick when present).
#   openssl       - certificates for the local control plane
#   buildah runc skopeo umoci debootstrap - daemonless image builds and smoke runs
#   containernetworking-plugins iptables iproute2 gcc libc6-dev - the real node (hack/cluster/realnode.py):
#                 CNI bridge/host-local, kube-proxy's rules, the node's network namespace, the static pause binary
set -euo pipefail
need=()
for pkg in openssl buildah runc skopeo umoci debootstrap containernetworking-plugins iptables iproute2 gcc libc6-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "==> apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go toolchain missing (needed to build the local control plane)"; exit 1; }
