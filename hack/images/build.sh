#!/usr/bin/env bash
# Build the project's container images with buildah (no daemon, no registry) -> `make images`.
#
#   localhost/bertserve-server:<version>      from server_image/Dockerfile (TensorFlow + CUDA wheels)
#   localhost/bertserve-server:<version>-cpu  the same Dockerfile's `cpu` stage: tensorflow-cpu, no CUDA
#   localhost/bertserve-operator:<version>    from operator/Dockerfile
#
# <version> is pyproject.toml's project version: the operator's default server image and the
# chart's image values derive from it too (tests/images/test_images.py checks they agree).
# Each image is also written as an OCI archive, which any registry accepts through
#   skopeo copy oci-archive:.local/images/bertserve-server-<version>.tar docker://REGISTRY/bertserve-server:<version>
# plus a JSON summary beside it (image id, size, build and export seconds) for the tests and docs.
#
# Caching: the base image (base.sh), buildah's layer cache and the exported archives (by image id)
# live under $BERTSERVE_CACHE/images-<suite>-<key>/, so a fresh clone with unchanged sources
# rebuilds nothing; an archive is re-exported only when its image id changed.
#
# Usage: hack/images/build.sh [server|server-cpu|operator]...     (default: all three)
# Env:   BERTSERVE_SERVER_DOCKERFILE / BERTSERVE_OPERATOR_DOCKERFILE   build another Dockerfile
#        BERTSERVE_IMAGES_VERBOSE=1            stream buildah's output (it always goes to a log)
set -euo pipefail
# shellcheck source=hack/images/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=hack/images/base.sh
source "$IMAGES_ROOT/hack/images/base.sh"

[[ $EUID -eq 0 ]] || { echo "error: image builds here run as root (debootstrap, runc)" >&2; exit 2; }
images_require buildah runc skopeo debootstrap python3 flock
images_lock
images_base

VERSION="$(images_version)"
mkdir -p "$IMAGES_OUT"

dockerfile_for() {
    case "$1" in
        server | server-cpu) echo "${BERTSERVE_SERVER_DOCKERFILE:-$IMAGES_ROOT/server_image/Dockerfile}" ;;
        operator) echo "${BERTSERVE_OPERATOR_DOCKERFILE:-$IMAGES_ROOT/operator/Dockerfile}" ;;
        *) echo "error: unknown image '$1' (server, server-cpu or operator)" >&2; exit 2 ;;
    esac
}

# The image's tag: the CPU server is a variant of the server image (same repository, `-cpu` tag),
# so a registry holds one bertserve-server repository with both.
tag_for() {
    case "$1" in
        server-cpu) echo "localhost/bertserve-server:$VERSION-cpu" ;;
        *) echo "localhost/bertserve-$1:$VERSION" ;;
    esac
}

# Tag the build result as $ref, first removing the build host's CAs when they were mounted.
#
# Why: the image's ca-certificates postinst ran while the host's local CA dir (on CI: the egress
# proxy's interception CA) was mounted, so /etc/ssl/certs trusts it. An image that trusts a
# machine's TLS-interception CA must not leave that machine, so one small layer re-runs
# `update-ca-certificates --fresh` without the mount (Debian's CAs only). Keyed by the build's image
# id (a label), so an unchanged build reuses the same final image and its exported archive.
# Prints the final image id.
finalize() {
    local ref="$1" built="$2" with_ca="$3" ctr
    if [[ "$with_ca" != true ]]; then
        buildah tag "$built" "$ref"
        echo "$built"
        return
    fi
    local from
    from="$(buildah inspect --type image --format \
        '{{index .OCIv1.Config.Labels "io.bertserve.ca-scrubbed-from"}}' "$ref" 2>/dev/null || true)"
    if [[ "$from" != "$built" ]]; then
        ctr="$(buildah from --pull=never "$built")"
        if buildah run --user 0:0 --network none "$ctr" -- test -x /usr/sbin/update-ca-certificates; then
            buildah run --user 0:0 --network none "$ctr" -- update-ca-certificates --fresh >/dev/null
        fi
        buildah config --label "io.bertserve.ca-scrubbed-from=$built" \
            --created-by "update-ca-certificates --fresh  # hack/images/build.sh: drop the build host's CAs" \
            "$ctr"
        buildah commit --quiet --rm "$ctr" "$ref" >/dev/null
    fi
    buildah inspect --type image --format '{{.FromImageID}}' "$ref"
}

build_one() {
    local name="$1" dockerfile ref tag stem log start build_s export_s iid
    dockerfile="$(dockerfile_for "$name")"
    [[ -f "$dockerfile" ]] || { echo "error: $dockerfile does not exist" >&2; exit 1; }
    ref="$(tag_for "$name")"
    tag="${ref##*:}"
    stem="$IMAGES_OUT/bertserve-$name-$VERSION"
    log="$stem.build.log"

    local args=(--pull=never --layers --network host --runtime runc --format oci
        --signature-policy "$IMAGES_POLICY"
        --label "org.opencontainers.image.version=$VERSION"
        --label "org.opencontainers.image.title=bertserve-$name"
        --iidfile "$stem.iid.new" -f "$dockerfile" -t "$ref-unscrubbed")
    # The server Dockerfile has two stages: `gpu` (TensorFlow + CUDA wheels) and `cpu`
    # (tensorflow-cpu, no CUDA); see server_image/Dockerfile.
    case "$name" in
        server) args+=(--target gpu) ;;
        server-cpu) args+=(--target cpu) ;;
    esac
    local with_ca=false
    if [[ -d "$IMAGES_CA_DIR" ]] && compgen -G "$IMAGES_CA_DIR/*.crt" >/dev/null; then
        args+=(-v "$IMAGES_CA_DIR:/usr/local/share/ca-certificates:ro")
        with_ca=true
    fi

    echo "==> building $ref from ${dockerfile#"$IMAGES_ROOT"/} (log: ${log#"$IMAGES_ROOT"/})"
    start=$(date +%s)
    if [[ "${BERTSERVE_IMAGES_VERBOSE:-0}" == 1 ]]; then
        buildah bud "${args[@]}" "$IMAGES_ROOT" 2>&1 | tee "$log"
    elif ! buildah bud "${args[@]}" "$IMAGES_ROOT" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "error: building $ref failed (full log: $log)" >&2
        exit 1
    fi
    build_s=$(($(date +%s) - start))
    iid="$(cat "$stem.iid.new")"
    rm -f "$stem.iid.new"
    iid="$(finalize "$ref" "${iid#sha256:}" "$with_ca")"

    # Exporting compresses every layer again (minutes for the server image), so archives are kept
    # in the cache by image id (CI starts from a fresh clone every run) and hard-linked into
    # $IMAGES_OUT; an unchanged image costs nothing.
    local cached="$IMAGES_STATE/export/bertserve-$name-$VERSION-${iid:0:12}.tar"
    local exported_now=false
    if [[ ! -f "$cached" ]]; then
        echo "==> exporting $ref to an OCI archive (gzip layers)"
        start=$(date +%s)
        mkdir -p "$IMAGES_STATE/export"
        # Older archives of this image are superseded (and GBs each). `-[0-9]`: the server's
        # pattern must not match the server-cpu archives.
        find "$IMAGES_STATE/export" -name "bertserve-$name-[0-9]*" -delete
        buildah push --quiet --signature-policy "$IMAGES_POLICY" "$ref" "oci-archive:$cached.new:$tag" >/dev/null
        mv "$cached.new" "$cached"
        echo $(($(date +%s) - start)) >"$cached.seconds"
        exported_now=true
    fi
    export_s="$(cat "$cached.seconds" 2>/dev/null || echo 0)"
    rm -f "$stem.tar"
    ln "$cached" "$stem.tar" 2>/dev/null || cp "$cached" "$stem.tar"

    local size
    # buildah reports the uncompressed size in SI units ("1.87 GB"); 3 digits are enough here.
    size="$(buildah images --format '{{.Size}}' "$ref" | head -n1)"
    python3 - "$stem.json" "$ref" "$iid" "$size" "$build_s" "$export_s" "$exported_now" "$stem.tar" \
        "$dockerfile" "$VERSION" "$tag" <<'PYEOF'
import json, os, sys
out, ref, iid, size, build_s, export_s, exported_now, tar, dockerfile, version, tag = sys.argv[1:]
num, unit = size.split()
size_bytes = round(float(num) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit])
summary = {
    "ref": ref,
    "version": version,
    "image_id": iid,
    "dockerfile": dockerfile,
    "size_bytes": size_bytes,
    "archive": tar,
    "archive_bytes": os.path.getsize(tar),
    "archive_ref": tag,
    "build_seconds": int(build_s),
    # How long writing this archive took, and whether this run did it (else it came from the cache).
    "export_seconds": int(export_s),
    "exported_now": exported_now == "true",
}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)
PYEOF
}

total_start=$(date +%s)
names=("$@")
((${#names[@]})) || names=(server server-cpu operator)
for n in "${names[@]}"; do
    build_one "$n"
done

# Superseded images (an older build that lost its tag) are dangling now; drop them so the store
# does not grow by a multi-GB layer on every change. Named images and the layer cache stay.
buildah rmi --prune >/dev/null 2>&1 || true

echo "==> images (version $VERSION, $(($(date +%s) - total_start)) s in all)"
for n in "${names[@]}"; do
    python3 - "$IMAGES_OUT/bertserve-$n-$VERSION.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"  {s['ref']:<38} id {s['image_id'][:12]}  size {s['size_bytes'] / 1e6:8.1f} MB"
      f"  archive {s['archive_bytes'] / 1e6:8.1f} MB  build {s['build_seconds']:4d} s"
      f"  export {s['export_seconds']:4d} s{'' if s['exported_now'] else ' (cached)'}")
PYEOF
done
