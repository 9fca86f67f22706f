"""``bertserve`` subcommands: validate, render, convert-checkpoint.

Why it exists: a BertServer is a few lines of YAML, but what it turns into (a Deployment with
probes, volumes and GPU limits, Services, an autoscaler) is not obvious. ``render`` prints exactly
what the operator would apply, using the same pure builders, without a cluster; ``validate``
gives the operator's error for a bad spec before it is applied; ``convert-checkpoint`` turns a
Hugging Face / safetensors BERT into the Google checkpoint layout the server reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from bertserve_api import manifests, names
from bertserve_api.spec import SpecError, parse_spec

DEFAULT_IMAGE = names.DEFAULT_SERVER_IMAGE
"""The operator's default server image (a chart install passes its ``serverImage`` instead)."""
DEFAULT_CPU_IMAGE = names.DEFAULT_SERVER_CPU_IMAGE
"""The operator's default for BertServers with ``resources.gpus: 0`` (the chart passes ``serverCpuImage``)."""


def _load_documents(path: str) -> list[dict[str, Any]]:
    import yaml  # only the CLI reads YAML; the API core stays standard-library only

    stream: TextIO
    if path == "-":
        docs = list(yaml.safe_load_all(sys.stdin))
    else:
        with open(path, encoding="utf-8") as stream:
            docs = list(yaml.safe_load_all(stream))
    return [d for d in docs if d]


def _bertservers(docs: list[dict[str, Any]], source: str) -> Iterator[dict[str, Any]]:
    found = False
    for doc in docs:
        if doc.get("kind") == names.KIND:
            found = True
            if doc.get("apiVersion") != names.API_VERSION:
                raise SpecError("apiVersion", f"expected {names.API_VERSION}, got {doc.get('apiVersion')!r}")
            yield doc
    if not found:
        raise SpecError("kind", f"no {names.KIND} found in {source}")


def _dump(objects: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(objects if len(objects) != 1 else objects[0], out, indent=2, sort_keys=False)
        out.write("\n")
        return
    import yaml

    out.write(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False))


def cmd_validate(args: argparse.Namespace) -> int:
    for doc in _bertservers(_load_documents(args.file), args.file):
        name = doc.get("metadata", {}).get("name", "?")
        parse_spec(doc.get("spec"))
        print(f"{name}: valid")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    options = manifests.RenderOptions(
        default_image=args.image, default_cpu_image=args.cpu_image, cluster_domain=args.cluster_domain
    )
    objects: list[dict[str, Any]] = []
    for doc in _bertservers(_load_documents(args.file), args.file):
        meta = doc.get("metadata", {})
        owner = manifests.Owner(
            name=meta["name"], namespace=args.namespace or meta.get("namespace") or "default"
        )
        spec = parse_spec(doc.get("spec"))
        objects.extend(manifests.render(owner, spec, options).all())
    _dump(objects, args.output, sys.stdout)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        from bertserve_server.model import convert
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        print(
            f"convert-checkpoint needs the server extra (pip install 'bertserve[server]'): {exc}",
            file=sys.stderr,
        )
        return 1
    return int(convert.main(list(args.rest)) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check BertServer manifests like the operator does")
    p.add_argument("-f", "--file", required=True, help="YAML file with BertServer(s), or - for stdin")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the objects the operator would apply for BertServer manifests")
    p.add_argument("-f", "--file", required=True, help="YAML file with BertServer(s), or - for stdin")
    p.add_argument(
        "-n", "--namespace", help="namespace to render into (default: the manifest's, else default)"
    )
    p.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help=f"server image when spec.image is unset: the operator's default ({DEFAULT_IMAGE}); "
        "pass your chart's serverImage to see what your operator applies",
    )
    p.add_argument(
        "--cpu-image",
        default=DEFAULT_CPU_IMAGE,
        help=f"server image when spec.image is unset and resources.gpus is 0 ({DEFAULT_CPU_IMAGE}); "
        "pass your chart's serverCpuImage ('' = --image for every BertServer)",
    )
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "convert-checkpoint",
        help="convert a Hugging Face/safetensors BERT to the Google checkpoint layout (see --help)",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert-checkpoint"]:
        # Its options belong to the converter's own parser; argparse sub-commands cannot pass
        # unknown options through untouched.
        return cmd_convert(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
