"""Print the layers of built images: size on disk, size in the archive, and the step that made each.

Why it exists: "what does a pull cost" is answered per layer (a node pulls only the layers it has
not got), and the images README keeps that breakdown for both server images. Reads the project's
container store (hack/images/common.sh) and the OCI archives build.sh exported; builds nothing.

    python3 hack/images/layers.py [server] [server-cpu] [operator]     (as root, like build.sh)

Standard library only (it runs with the host's python3, like build.sh's summaries).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Layer:
    step: str  # the Dockerfile step (history entry) that made the layer
    disk_bytes: int  # uncompressed, as unpacked on a node
    archive_bytes: int  # gzip-compressed, as pulled (-1: the image has not been exported)


def _store() -> dict[str, str]:
    """Store paths and the version, from hack/images/common.sh itself (one definition)."""
    script = (
        f"source {ROOT / 'hack/images/common.sh'} && images_env && "
        'printf "%s\\n" "$IMAGES_STATE" "$IMAGES_OUT" "$(images_version)"'
    )
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout.split(
        "\n"
    )
    return {"IMAGES_STATE": out[0], "IMAGES_OUT": out[1], "VERSION": out[2]}


def _archive_layer_sizes(archive: Path) -> list[int]:
    """Compressed size of each layer, in order, from the archive's index and manifest."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, object]:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None, digest
            return dict(json.load(member))

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (manifest_ref,) = json.load(index_file)["manifests"]
        manifest = blob(manifest_ref["digest"])
        return [int(layer["size"]) for layer in manifest["layers"]]  # type: ignore[index,union-attr]


def _short(created_by: str, width: int = 90) -> str:
    text = " ".join(created_by.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def layers(name: str) -> list[Layer]:
    store = _store()
    version = store["VERSION"]
    ref = (
        f"localhost/bertserve-server:{version}-cpu"
        if name == "server-cpu"
        else f"localhost/bertserve-{name}:{version}"
    )
    env = dict(os.environ)
    conf = Path(store["IMAGES_STATE"])
    env.update(
        CONTAINERS_STORAGE_CONF=str(conf / "storage.conf"),
        CONTAINERS_CONF=str(conf / "containers.conf"),
        CONTAINERS_REGISTRIES_CONF=str(conf / "registries.conf"),
    )
    inspect = json.loads(
        subprocess.run(
            ["buildah", "inspect", "--type", "image", ref],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
    )
    oci = inspect["OCIv1"]
    diff_ids = oci["rootfs"]["diff_ids"]
    steps = [h.get("created_by", "") for h in oci.get("history", []) if not h.get("empty_layer")]
    assert len(steps) == len(diff_ids), (len(steps), len(diff_ids))
    layer_db = conf / "storage/overlay-layers/layers.json"
    disk = {
        entry["diff-digest"]: int(entry.get("diff-size", 0))
        for entry in json.loads(layer_db.read_text())
        if "diff-digest" in entry
    }
    # build.sh keeps each exported archive in the store by image id (and links it into .local/images).
    iid = str(inspect["FromImageID"])
    archive = conf / "export" / f"bertserve-{name}-{version}-{iid[:12]}.tar"
    packed = _archive_layer_sizes(archive) if archive.exists() else [-1] * len(diff_ids)  # not exported
    return [
        Layer(_short(step), disk.get(diff_id, 0), size)
        for step, diff_id, size in zip(steps, diff_ids, packed, strict=True)
    ]


def main(names: list[str]) -> int:
    for name in names or ["server", "server-cpu"]:
        rows = layers(name)
        total, archived = sum(r.disk_bytes for r in rows), sum(r.archive_bytes for r in rows)
        print(f"\n{name}: {total / 1e6:.1f} MB on disk, {archived / 1e6:.1f} MB in the archive\n")
        print("| # | layer (the step that made it) | on disk | in the archive (gzip) |")
        print("|---|---|---:|---:|")
        for i, r in enumerate(rows, 1):
            packed = f"{r.archive_bytes / 1e6:.1f} MB" if r.archive_bytes >= 0 else "not exported"
            print(f"| {i} | `{r.step}` | {r.disk_bytes / 1e6:.1f} MB | {packed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
