#!/usr/bin/env bash
# System packages `make test` needs, from Debian's registry (idempotent; silent when all present).
#   openssl       - certificates for the local control plane
#   buildah runc skopeo umoci debootstrap - daemonless image builds and smoke runs
#   git           - the tests copy the checkout by its file list (tests/test_bootstrap.py)
#   containernetworking-plugins iptables iproute2 gcc libc6-dev - the real node (hack/cluster/realnode.py):
#                 CNI bridge/host-local, kube-proxy's rules, the node's network namespace, the static pause binary
#
# As root, missing packages are installed with apt-get. As anyone else nothing can be installed,
# so the script stops at once with one line: which packages, and the command that installs them.
# Go (>= 1.26, for the local control plane) is not in Debian's registry: it is checked, not installed.
set -euo pipefail
PACKAGES=(openssl buildah runc skopeo umoci debootstrap git containernetworking-plugins iptables iproute2 gcc libc6-dev)

need=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "error: missing system packages: ${need[*]}; install them with: sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
        exit 1
    fi
    echo "==> apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || {
    echo "error: Go >= 1.26 not found on PATH (builds the local control plane): https://go.dev/doc/install" >&2
    exit 1
}
