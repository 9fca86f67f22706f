#!/usr/bin/env bash
# Make `docker.io/library/debian:bookworm-slim` in the project's container store, without a registry.
#
# Why: both Dockerfiles start `FROM debian:bookworm-slim` and must stay ordinary Dockerfiles that a
# user builds with Docker; this machine can reach Debian's package archive but no image registry.
# So we build the same image the official one is built from: `debootstrap --variant=minbase`, then
# the "slimify" and minimizing steps of debuerreotype (no docs/man/locales, apt cleans after
# itself, services never start during builds). The result is cached under
# $BERTSERVE_CACHE/images-<suite>-<key>/ (key = suite, variant, recipe revision, mirror; see
# common.sh), and that directory also holds the build layer cache, so a new base never mixes with
# layers built on the old one.
#
# Pin record: base-manifest.txt in the cache dir (and labels on the image) holds the archive's
# Release date, the mirror and every package version; hack/images/base-packages.txt is the package
# set this recipe was last checked against, and a drift is reported.
#
# Usage: hack/images/base.sh [--force]      (sourced by build.sh, which holds the store lock)
set -euo pipefail
# shellcheck source=hack/images/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# debuerreotype-slimify's path filters, as in the official slim image's /etc/dpkg/dpkg.cfg.d/docker.
_slim_dpkg_cfg() {
    cat <<'EOF'
# Written by bertserve hack/images/base.sh, as in the official debian:*-slim images.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
}

_slimify_rootfs() {
    local rootfs="$1"
    _slim_dpkg_cfg >"$rootfs/etc/dpkg/dpkg.cfg.d/docker"
    # Delete what the filters would not have installed (copyright files stay: licences).
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{info,linda,locale,man}/* "$rootfs"/usr/share/lintian/overrides/*

    # apt: keep no .deb files, binary caches or translations in any layer built on this base.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # A package's postinst must never start a daemon inside a build container.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

    # Same sources as the official image (deb822), so `apt-get update` in a Dockerfile sees the
    # point release plus security updates.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $BASE_MIRROR
Suites: $BASE_SUITE $BASE_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $BASE_SECURITY_MIRROR
Suites: $BASE_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

    # Host- and run-specific state: the runtime provides /dev, resolv.conf and hostname; logs and
    # apt lists only make the layer bigger and different on every run.
    rm -rf "$rootfs"/dev/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
        "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    find "$rootfs/var/log" -type f -delete
    : >"$rootfs/etc/machine-id"
    rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
}

images_base() {
    local force="${1:-}"
    images_require debootstrap buildah
    images_env
    local manifest="$IMAGES_STATE/base-manifest.txt"
    if [[ "$force" != "--force" && -f "$manifest" ]] \
        && buildah images --quiet "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "==> base $BASE_IMAGE cached ($(sed -n 's/^release-date: //p' "$manifest"), $IMAGES_STATE)"
        return 0
    fi

    local start rootfs ctr mnt release_date
    start=$(date +%s)
    rootfs="$IMAGES_STATE/rootfs"
    rm -rf "$rootfs" "$manifest"
    echo "==> debootstrap --variant=$BASE_VARIANT $BASE_SUITE from $BASE_MIRROR (about 40 s)"
    # The archive's signature is checked against the host's debian-archive-keyring.
    debootstrap --variant="$BASE_VARIANT" --components=main \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$BASE_SUITE" "$rootfs" "$BASE_MIRROR" >"$IMAGES_STATE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$IMAGES_STATE/debootstrap.log" >&2; exit 1; }
    release_date="$(sed -n 's/^Date: //p' "$rootfs"/var/lib/apt/lists/*_dists_"${BASE_SUITE}"_*Release | head -n1)"
    {
        echo "image: $BASE_IMAGE"
        echo "suite: $BASE_SUITE"
        echo "variant: $BASE_VARIANT"
        echo "recipe-revision: $BASE_REVISION"
        echo "mirror: $BASE_MIRROR"
        echo "release-date: $release_date"
        echo "debootstrap: $(dpkg-query -W -f='${Version}' debootstrap)"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "packages:"
        chroot "$rootfs" dpkg-query -W -f='  ${Package} ${Version}\n' | sort
    } >"$manifest.tmp"
    _slimify_rootfs "$rootfs"

    # Drift check against the package set this recipe was reviewed with (names only: versions move
    # with every point release, which is what we want for security updates).
    local recorded="$IMAGES_ROOT/hack/images/base-packages.txt"
    if [[ -f "$recorded" ]] && ! diff -u <(awk '!/^#/ {print $1}' "$recorded") \
        <(sed -n 's/^  \([^ ]*\) .*/\1/p' "$manifest.tmp") >"$IMAGES_STATE/base-drift.diff"; then
        echo "warning: base package set differs from hack/images/base-packages.txt:" >&2
        cat "$IMAGES_STATE/base-drift.diff" >&2
    fi

    # buildah has no `import`: copy the tree into an empty container and commit it.
    buildah rmi --force "$BASE_IMAGE" >/dev/null 2>&1 || true
    ctr="$(buildah from --pull=never scratch)"
    mnt="$(buildah mount "$ctr")"
    tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
    buildah umount "$ctr" >/dev/null
    buildah config --cmd '["bash"]' \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --os linux --arch "$(dpkg --print-architecture)" \
        --label "io.bertserve.base.release-date=$release_date" \
        --label "io.bertserve.base.mirror=$BASE_MIRROR" \
        --label "io.bertserve.base.recipe=hack/images/base.sh r$BASE_REVISION" "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    mv "$manifest.tmp" "$manifest"
    echo "==> base $BASE_IMAGE built in $(($(date +%s) - start)) s ($release_date):" \
        "$(buildah images --format '{{.Size}}' "$BASE_IMAGE")"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    [[ $EUID -eq 0 ]] || { echo "error: image builds here run as root (debootstrap, runc)" >&2; exit 2; }
    images_lock
    images_base "${1:-}"
fi
