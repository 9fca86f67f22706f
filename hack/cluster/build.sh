#!/usr/bin/env bash
# Build the local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from pinned Go module versions, no Docker, no
# prebuilt binaries. See hack/cluster/README.md for why it is done this way.
#
# Usage:
#   hack/cluster/build.sh                  build what is missing; last stdout line = bin dir
#   hack/cluster/build.sh --print-bin-dir  print the bin dir for the pinned versions, build nothing
#   hack/cluster/build.sh --force          rebuild every binary for this key
#   hack/cluster/build.sh --prune          after building, delete GOMODCACHE and GOCACHE (~5.5 GB),
#                                          keeping only the binaries (~460 MB; what CI should cache)
#   hack/cluster/build.sh --regen-wrappers rewrite kubebins/, nodebins/ and etcdbin/ go.mod+go.sum from the pins
#   hack/cluster/build.sh --node           build the real-node binaries instead (kubelet, kube-proxy,
#                                          containerd, ctr, containerd-shim-runc-v2, coredns, pause);
#                                          last stdout line = the node bin dir
#   hack/cluster/build.sh --node --print-bin-dir   the node bin dir, build nothing
#
# Environment:
#   BERTSERVE_CACHE  cache root (default: $HOME/.cache/bertserve). Holds GOMODCACHE, GOCACHE
#                    and k8s-<versionkey>/bin/.
set -euo pipefail

# --- pins --------------------------------------------------------------------------------
# Kubernetes v1.35.7 (the reference's pick) is not served by the module proxy ("This module
# version is not available"), and at v1.35.6 some staging zips (kube-proxy, externaljwt) and
# sumdb entries (mount-utils) are missing. v1.35.8 is the nearest patch with every staging
# module the binaries import (only sample-cli-plugin/sample-controller are absent; they are
# not in the build graph, so their replace lines are inert).
K8S_VERSION=v1.35.8
STAGING_VERSION=v0.35.8        # staging modules are published as v0.<minor>.<patch>
ETCD_VERSION=v3.6.10
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
# Real node (hack/cluster/realnode.py). containerd 2.x: Debian bookworm has only 1.6. runc itself
# and the CNI plugins are Debian packages (hack/ci-system-deps.sh). CoreDNS's go.mod has no
# replace lines, so `go install …@v` works; kubelet and kube-proxy come from nodebins/, the
# kubebins/ wrapper plus two tool lines (same pins, same resolved dependency versions).
CONTAINERD_VERSION=v2.2.9
COREDNS_VERSION=v1.14.7

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${BERTSERVE_CACHE:-$HOME/.cache/bertserve}"

export GOMODCACHE="$CACHE_ROOT/gomod"
export GOCACHE="$CACHE_ROOT/gocache"
export GOTOOLCHAIN=local        # fail loudly instead of downloading another toolchain
export CGO_ENABLED=0            # upstream ships these binaries static
export GOFLAGS="-buildvcs=false"
export GOWORK=off               # never pick up a go.work from a parent directory

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
NODE_BINARIES=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2 coredns pause)

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "[build.sh $(date +%H:%M:%S)] $*" >&2; }

command -v go >/dev/null || die "go not found on PATH (need Go >= 1.26: kwok and helm declare go 1.26.0)"

# The key changes whenever a pin, the wrappers' dependency set or the Go toolchain changes.
version_key() {
    local gov sum
    gov="$(go env GOVERSION)"
    sum="$(cat "$HERE/kubebins/go.sum" "$HERE/etcdbin/go.sum" 2>/dev/null | sha256sum | cut -c1-8)"
    echo "${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-${gov}-${sum}"
}

bin_dir() { echo "$CACHE_ROOT/k8s-$(version_key)/bin"; }

# The node binaries get a key of their own, so adding them never rebuilds the control plane.
node_version_key() {
    local gov sum
    gov="$(go env GOVERSION)"
    sum="$(cat "$HERE/nodebins/go.sum" 2>/dev/null | sha256sum | cut -c1-8)"
    echo "${K8S_VERSION}-containerd${CONTAINERD_VERSION}-coredns${COREDNS_VERSION}-${gov}-${sum}"
}

node_bin_dir() { echo "$CACHE_ROOT/node-$(node_version_key)/bin"; }

# --- wrapper modules -----------------------------------------------------------------------
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths;
# replace directives only apply in the main module, so a wrapper must map each one to its
# published version. The list is derived from the proxy's copy of k8s.io/kubernetes's go.mod.
regen_kubebins() {
    local dir="$HERE/kubebins" modfile staging m
    log "regenerating $dir from k8s.io/kubernetes@$K8S_VERSION"
    modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')"
    [[ -f "$modfile" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION go.mod"
    staging="$(sed -n 's|^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*|\1|p' "$modfile")"
    [[ -n "$staging" ]] || die "no staging replaces found in $modfile"
    mkdir -p "$dir"
    rm -f "$dir/go.mod" "$dir/go.sum"
    (
        cd "$dir"
        go mod init bertserve.local/kubebins >/dev/null 2>&1
        # Same go/godebug lines as upstream: the main module decides the binaries' GODEBUG defaults.
        go mod edit -go=1.25.0 -godebug=default=go1.25
        for m in $staging; do go mod edit -replace="$m=$m@$STAGING_VERSION"; done
        go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
        for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
            go mod edit -tool="k8s.io/kubernetes/cmd/$b"
        done
        go mod tidy
    )
}

# kubelet and kube-proxy: the kubebins wrapper with two more tool lines. Derived from kubebins'
# go.mod (not from the proxy again), so every shared dependency resolves to the same version and
# the Go build cache of the control-plane build is reused.
regen_nodebins() {
    local dir="$HERE/nodebins"
    log "regenerating $dir from $HERE/kubebins"
    mkdir -p "$dir"
    cp "$HERE/kubebins/go.mod" "$HERE/kubebins/go.sum" "$dir/"
    (
        cd "$dir"
        go mod edit -module=bertserve.local/nodebins \
            -tool=k8s.io/kubernetes/cmd/kubelet -tool=k8s.io/kubernetes/cmd/kube-proxy
        go mod tidy
    )
}

# etcd's server module also carries replace lines (so `go install …@v` is refused) and must not
# share a module graph with Kubernetes (MVS would move kube-apiserver's etcd client libraries).
regen_etcdbin() {
    local dir="$HERE/etcdbin"
    log "regenerating $dir from go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    mkdir -p "$dir"
    rm -f "$dir/go.mod" "$dir/go.sum"
    (
        cd "$dir"
        go mod init bertserve.local/etcdbin >/dev/null 2>&1
        go mod edit -go=1.25.0
        go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
        go mod edit -tool=go.etcd.io/etcd/server/v3
        go mod tidy
    )
}

# --- builds ----------------------------------------------------------------------------------
kube_ldflags() {
    # Without these, /version and `kubectl version` say v0.0.0-master+$Format:%H$ and helm's
    # kubeVersion checks break. -X on a missing variable is ignored, so stamp both packages.
    local ver="${K8S_VERSION#v}" major minor date flags="-s -w" kv pkg
    major="${ver%%.*}"; minor="${ver#*.}"; minor="${minor%%.*}"
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for kv in "gitVersion=$K8S_VERSION" "gitMajor=$major" "gitMinor=$minor" \
              "gitTreeState=clean" "buildDate=$date"; do
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            flags+=" -X $pkg.$kv"
        done
    done
    echo "$flags"
}

helm_ldflags() {
    # helm's Makefile stamps its version and the Kubernetes version of the client-go it links
    # (used for offline `helm template` capabilities).
    local modfile cgo minor
    modfile="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')"
    cgo="$(sed -n 's|^\s*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$modfile" | head -1)"
    minor="${cgo:-36}"
    echo "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
         "-X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
         "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
         "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
}

# build_one NAME OUTDIR: builds into a temp file and renames it, so an interrupted build never
# leaves a half-written binary that a later run would mistake for a finished one.
build_one() {
    local name="$1" out="$2" tmp="$2/.$1.tmp" start
    start=$(date +%s)
    rm -f "$tmp"
    case "$name" in
        kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
            (cd "$HERE/kubebins" && go build -trimpath -tags selinux,notest \
                -ldflags "$(kube_ldflags)" -o "$tmp" "k8s.io/kubernetes/cmd/$name") ;;
        kubelet|kube-proxy)
            (cd "$HERE/nodebins" && go build -trimpath -tags selinux,notest \
                -ldflags "$(kube_ldflags)" -o "$tmp" "k8s.io/kubernetes/cmd/$name") ;;
        containerd|ctr|containerd-shim-runc-v2)
            # Static, and without the snapshotters whose C libraries or kernel features are
            # absent here (btrfs, devmapper, zfs); overlayfs is what the node uses. The version
            # is stamped as containerd's Makefile does.
            local gobin; gobin="$(mktemp -d "$out/.gobin.XXXXXX")"
            GOBIN="$gobin" go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
                -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
                "github.com/containerd/containerd/v2/cmd/$name@$CONTAINERD_VERSION"
            mv "$gobin/$name" "$tmp"; rmdir "$gobin" ;;
        coredns)
            local gobin; gobin="$(mktemp -d "$out/.gobin.XXXXXX")"
            GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
            mv "$gobin/coredns" "$tmp"; rmdir "$gobin" ;;
        pause)
            # The sandbox ("pause") container's only process: Kubernetes' own pause.c from the
            # module cache, linked static so its image needs no libc (no registry to pull it from).
            local src
            src="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')"
            command -v gcc >/dev/null || die "gcc not found (needed for the static pause binary: apt-get install gcc libc6-dev)"
            gcc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION" -o "$tmp" "$src/build/pause/linux/pause.c"
            strip "$tmp" 2>/dev/null || true ;;
        etcd)
            # The version is a constant in etcd's source; only the commit needs stamping
            # (as etcd's scripts/build_lib.sh does). The proxy reports the tag's commit.
            local sha
            sha="$(go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
                   | sed -n 's/^\s*"Hash": "\([0-9a-f]*\)",\?$/\1/p' | head -1 || true)"
            (cd "$HERE/etcdbin" && go build -trimpath \
                -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${sha:0:7}" \
                -o "$tmp" go.etcd.io/etcd/server/v3) ;;
        kwok)
            # No replace lines in kwok's go.mod: a plain `go install pkg@version` works.
            local gobin; gobin="$(mktemp -d "$out/.gobin.XXXXXX")"
            GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
            mv "$gobin/kwok" "$tmp"; rmdir "$gobin" ;;
        helm)
            local gobin; gobin="$(mktemp -d "$out/.gobin.XXXXXX")"
            GOBIN="$gobin" go install -trimpath -ldflags "$(helm_ldflags)" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
            mv "$gobin/helm" "$tmp"; rmdir "$gobin" ;;
        *) die "unknown binary $name" ;;
    esac
    mv -f "$tmp" "$out/$name"
    log "built $name in $(( $(date +%s) - start ))s ($(du -h "$out/$name" | cut -f1))"
}

main() {
    local force=0 prune=0 node=0 print=0 arg
    for arg in "$@"; do
        case "$arg" in
            --print-bin-dir) print=1 ;;
            --node) node=1 ;;
            --regen-wrappers) regen_kubebins; regen_nodebins; regen_etcdbin; return 0 ;;
            --force) force=1 ;;
            --prune) prune=1 ;;
            -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; return 0 ;;
            *) die "unknown argument: $arg" ;;
        esac
    done
    if [[ $print == 1 ]]; then
        if [[ $node == 1 ]]; then node_bin_dir; else bin_dir; fi
        return 0
    fi
    [[ -f "$HERE/kubebins/go.sum" && -f "$HERE/etcdbin/go.sum" && -f "$HERE/nodebins/go.sum" ]] \
        || die "wrapper modules missing: run $0 --regen-wrappers"

    local out total_start name missing=() wanted=("${BINARIES[@]}")
    out="$(bin_dir)"
    if [[ $node == 1 ]]; then
        out="$(node_bin_dir)"
        wanted=("${NODE_BINARIES[@]}")
    fi
    mkdir -p "$out"
    for name in "${wanted[@]}"; do
        if [[ $force == 1 || ! -x "$out/$name" ]]; then missing+=("$name"); fi
    done
    if [[ ${#missing[@]} == 0 ]]; then
        log "all binaries present for key $(basename "$(dirname "$out")")"
    else
        log "cache root $CACHE_ROOT; building: ${missing[*]}"
        total_start=$(date +%s)
        for name in "${missing[@]}"; do
            log "building $name ..."
            build_one "$name" "$out"
        done
        log "done in $(( $(date +%s) - total_start ))s; disk: $(du -sch "$GOMODCACHE" "$GOCACHE" \
            "$(dirname "$out")" 2>/dev/null | tail -1 | cut -f1) (module cache + build cache + binaries)"
    fi
    if [[ $prune == 1 ]]; then
        # The module cache is read-only by design; `go clean` knows how to remove it.
        go clean -modcache && go clean -cache && rm -rf "$GOMODCACHE" "$GOCACHE"
        log "pruned Go caches; binaries kept: $(du -sh "$(dirname "$out")" | cut -f1)"
    fi
    echo "$out"
}

main "$@"
