"""``bertserve-fetch``: put a model from a URL into a directory, once, verified, safely unpacked.

Why it exists: a ``BertServer`` whose model source is a URI (Google's
``uncased_L-12_H-768_A-12.zip``, a tarball on an internal server) gets an init container that runs
this command into a volume the server container then mounts. It must be safe to run in a pod
that restarts:

* **One layout rule, whatever the archive's top folder.** ``--dest`` is the directory that
  ends up holding the model's files. A folder that is alone at the top of the archive is
  unwrapped (repeatedly, and ignoring macOS ``__MACOSX/`` metadata), so Google's
  ``uncased_L-12_H-768_A-12.zip``, ``tar czf mrpc_output.tar.gz mrpc_output/``,
  ``tar czf out.tgz -C / home/me/mrpc_output`` and an archive of the bare files all give
  ``--dest/bert_config.json`` or ``--dest/model.ckpt-343.index``. An archive with several
  entries at its top (a bundle of ``uncased_L-12_H-768_A-12/`` and ``mrpc_output/``) keeps
  them as they are, one level below ``--dest``. See :func:`content_root`.
* **Idempotent, and never touches a sibling.** A marker file (:data:`MARKER`) records the URL,
  the checksum and the entries a completed fetch put into ``--dest``; a restarted pod with the
  same arguments finds it and downloads nothing. Work happens in a temporary directory inside
  ``--dest`` and the marker is written last, so an interrupted or failed fetch leaves nothing
  behind and is simply redone. A fetch of a different URL into the same ``--dest`` removes only
  the entries the previous fetch recorded: files another fetch (or a person) put beside them,
  such as a fine-tuned folder next to a pretrained one, are never deleted.
* **Verified.** With ``--sha256`` the download is checked before anything is unpacked; a
  mismatch exits non-zero with both digests and leaves nothing in ``--dest``.
* **Safe to unpack.** ``.zip``, ``.tar.gz``/``.tgz`` (and ``.tar``) are unpacked refusing
  absolute paths, ``..``, links and device files; any other file is kept as is under its name.
* **Credentials from a mounted Secret only.** ``--auth-dir`` holds ``authorization`` (the whole
  header value) or ``token`` (sent as ``Bearer``). Nothing comes from the command line or the
  environment, and the header is not forwarded on redirects to another URL.
* **The URL is not an argument in a pod.** A pre-signed URL is itself a credential, and a pod's
  arguments are readable by anyone who may read pods. The operator passes it in the environment
  variable :data:`URL_ENV` from a Secret (``--url`` stays for local use); logs and errors show it
  without query string, fragment or user info.

Standard library only (``urllib``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO

MARKER = ".bertserve-fetch.json"
CHUNK = 1024 * 1024
ATTEMPTS = 3
PROGRESS_EVERY_S = 2.0


class FetchError(Exception):
    """A failure with a message fit for the pod's log."""


URL_ENV = "BERTSERVE_FETCH_URL"
"""Where the URL comes from when ``--url`` is not given (set from a Secret by the operator)."""


def shown(url: str) -> str:
    """``url`` as logs and errors show it: no user info, query string or fragment (credentials
    of pre-signed URLs live there)."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    hidden = "?…" if parsed.query else ""
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", "")) + hidden


def _log(message: str) -> None:
    print(f"bertserve-fetch: {message}", file=sys.stderr, flush=True)


def read_auth_header(auth_dir: str | None) -> str | None:
    """The ``Authorization`` value from a mounted Secret directory, if it holds one."""
    if auth_dir is None:
        return None
    base = Path(auth_dir)
    if not base.is_dir():
        raise FetchError(f"--auth-dir {auth_dir} is not a directory")
    header = base / "authorization"
    if header.is_file():
        return header.read_text(encoding="utf-8").strip() or None
    token = base / "token"
    if token.is_file():
        value = token.read_text(encoding="utf-8").strip()
        return f"Bearer {value}" if value else None
    raise FetchError(f"--auth-dir {auth_dir} has neither an 'authorization' nor a 'token' file")


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


def download(url: str, target: IO[bytes], auth: str | None, timeout: float = 60.0) -> str:
    """Stream ``url`` into ``target``; the hex sha256 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": "bertserve-fetch"})
    if auth:
        request.add_unredirected_header("Authorization", auth)
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        last = time.monotonic()
        while chunk := response.read(CHUNK):
            target.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                share = f" ({100 * done / total:.0f}%)" if total else ""
                _log(f"{_human(done)}{' / ' + _human(total) if total else ''}{share}")
        if total and done != total:
            raise FetchError(f"download of {shown(url)} ended after {done} of {total} bytes")
    _log(f"downloaded {_human(done)}")
    return digest.hexdigest()


def _download_with_retries(url: str, path: Path, auth: str | None) -> str:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with open(path, "wb") as handle:
                return download(url, handle, auth)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise FetchError(
                    f"{shown(url)}: HTTP {exc.code} {exc.reason}; check the credentials in --auth-dir"
                ) from None
            if exc.code < 500 or attempt == ATTEMPTS:
                raise FetchError(f"{shown(url)}: HTTP {exc.code} {exc.reason}") from None
            _log(f"HTTP {exc.code}, retrying ({attempt}/{ATTEMPTS})")
        except (urllib.error.URLError, OSError, FetchError) as exc:
            if attempt == ATTEMPTS:
                reason = getattr(exc, "reason", exc)
                raise FetchError(f"{shown(url)}: {reason}") from None
            _log(f"{exc}, retrying ({attempt}/{ATTEMPTS})")
        time.sleep(min(2**attempt, 10))
    raise FetchError(f"{shown(url)}: download failed")  # pragma: no cover - the loop returns or raises


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return None


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise FetchError(f"archive member {name!r} points outside the destination; refusing to unpack")
    return path


def unpack_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            member = _safe_member(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise FetchError(f"archive member {info.filename!r} is a symbolic link; refusing to unpack")
            target = into.joinpath(*member.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)


def unpack_tar(archive: Path, into: Path) -> None:
    """Copy regular files and folders out one by one, as :func:`unpack_zip` does.

    Not ``extractall(filter="data")``: extraction filters exist only from Python 3.11.4, and the
    image's Debian Python is 3.11.2. Copying file contents also never applies the archive's
    owners or modes, which a non-root fetch could not set anyway.
    """
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _safe_member(member.name)
            if not (member.isfile() or member.isdir()):
                raise FetchError(f"archive member {member.name!r} is not a regular file; refusing to unpack")
        for member in members:
            target = into.joinpath(*_safe_member(member.name).parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tf.extractfile(member)
            if source is None:  # pragma: no cover - isfile() members always have contents
                raise FetchError(f"archive member {member.name!r} has no contents")
            with source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)


IGNORED_TOP_ENTRIES = frozenset({"__MACOSX"})
"""Archive metadata folders (macOS Finder zips) that are dropped and never count as content."""


def content_root(staging: Path) -> Path:
    """The folder whose entries become ``--dest``'s entries: the layout rule in one place.

    Starting at the unpacked archive, descend while the level holds exactly one entry and that
    entry is a folder. A model directory holds files (``bert_config.json``,
    ``model.ckpt-343.index``), so the descent stops there; a bundle holds several folders, so it
    stops at the bundle. How the archive was packed (``tar czf x.tgz x/``, ``-C /``, Finder's
    "Compress") therefore does not change where the files land.
    """
    for ignored in IGNORED_TOP_ENTRIES:
        _remove(staging / ignored)
    root = staging
    while True:
        entries = list(root.iterdir())
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
            return root
        root = entries[0]


def _read_marker(dest: Path) -> dict[str, object] | None:
    try:
        data = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_matches(dest: Path, url: str, sha256: str | None) -> bool:
    data = _read_marker(dest)
    if data is None:
        return False
    return bool(data.get("url") == url and (sha256 is None or data.get("sha256") == sha256))


def _remove_previous_fetch(dest: Path) -> None:
    """Remove what the fetch recorded in ``dest``'s marker, and nothing else."""
    data = _read_marker(dest)
    (dest / MARKER).unlink(missing_ok=True)
    entries = data.get("entries") if data else None
    if not isinstance(entries, list):
        _log(f"{dest} holds an earlier fetch without a list of its files; keeping them")
        return
    for name in entries:
        if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
            _remove(dest / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fetch(url: str, dest: str | Path, *, sha256: str | None = None, auth_dir: str | None = None) -> bool:
    """Fetch ``url`` into ``dest``; False when a previous identical fetch is already there."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"--url must be http:// or https://, got {shown(url)!r}")
    expected = sha256.lower().strip() if sha256 else None
    if expected is not None and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise FetchError("--sha256 must be 64 hexadecimal digits")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    if _marker_matches(out, url, expected):
        _log(f"{out} already holds {shown(url)}; nothing to do")
        return False
    auth = read_auth_header(auth_dir)
    name = PurePosixPath(urllib.parse.unquote(parsed.path)).name or "download"
    _log(f"fetching {shown(url)} into {out}")
    # Work beside the final files, in the same volume, so the last step is a rename.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as work_dir:
        work = Path(work_dir)
        archive = work / "download"
        digest = _download_with_retries(url, archive, auth)
        if expected is not None and digest != expected:
            raise FetchError(
                f"sha256 mismatch for {shown(url)}: expected {expected}, got {digest}; nothing was kept"
            )
        staging = work / "staging"
        staging.mkdir()
        kind = archive_kind(name)
        try:
            if kind == "zip":
                unpack_zip(archive, staging)
            elif kind == "tar":
                unpack_tar(archive, staging)
            else:
                archive.rename(staging / name)
        except (zipfile.BadZipFile, tarfile.TarError) as exc:
            raise FetchError(f"{name} is not a valid {kind} archive: {exc}") from None
        root = content_root(staging)
        if root != staging:
            _log(f"unwrapped the archive's top folder {root.relative_to(staging).as_posix()}/")
        if (out / MARKER).exists():  # an earlier fetch of another URL into this --dest
            _remove_previous_fetch(out)
        entries = sorted(entry.name for entry in root.iterdir())
        for name in entries:
            _remove(out / name)
            (root / name).rename(out / name)
        marker = {
            "url": url,
            "sha256": digest,
            "entries": entries,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    _log(f"done: {', '.join(sorted(p.name for p in out.iterdir() if p.name != MARKER))}")
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertserve-fetch", description="Download (and unpack) a model into a directory, once."
    )
    parser.add_argument(
        "--url", help=f"http(s) URL of a .zip, .tar.gz/.tgz or single file (default: ${URL_ENV})"
    )
    parser.add_argument(
        "--dest",
        required=True,
        help="directory that will hold the model's files (created if missing); a folder alone at "
        "the top of the archive is unwrapped into it, entries beside --dest are never touched",
    )
    parser.add_argument("--sha256", help="expected sha256 of the download (hex); checked before unpacking")
    parser.add_argument(
        "--auth-dir", help="mounted Secret with 'authorization' (header value) or 'token' (bearer token)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = args.url or os.environ.get(URL_ENV, "")
    if not url:
        parser.error(f"give --url or set {URL_ENV}")
    try:
        fetch(url, args.dest, sha256=args.sha256, auth_dir=args.auth_dir)
    except FetchError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
