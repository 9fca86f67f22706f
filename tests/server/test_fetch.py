"""``bertserve-fetch`` against a local HTTP server on 127.0.0.1: archives, checksums, auth, restarts."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bertserve_api import manifests
from bertserve_server.fetch import MARKER, URL_ENV, FetchError, fetch, main

FILES = {
    "bert_config.json": b'{"vocab_size": 10}',
    "vocab.txt": b"[PAD]\n[UNK]\n",
    "bert_model.ckpt.index": b"idx",
}


def make_zip(members: dict[str, bytes], top: str = "uncased_L-2_H-8_A-2") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], top: str = "model", symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            link = tarfile.TarInfo(f"{top}/link")
            link.type = tarfile.SYMTYPE
            link.linkname = symlink
            tf.addfile(link)
    return buffer.getvalue()


class Site:
    """Serves ``routes`` (path → bytes); ``/private/*`` needs ``Authorization: Bearer s3cret``."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.auth_seen: list[str | None] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                site.auth_seen.append(self.headers.get("Authorization"))
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.replace("/redirect/", "/", 1))
                    self.end_headers()
                    return
                if self.path.startswith("/private/") and self.headers.get("Authorization") != "Bearer s3cret":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = site.routes.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


def listing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def test_zip_is_unpacked_with_its_top_directory_and_a_marker(site, tmp_path):
    data = make_zip(FILES)
    site.routes["/uncased.zip"] = data
    dest = tmp_path / "models"
    assert fetch(site.url("/uncased.zip"), dest, sha256=hashlib.sha256(data).hexdigest()) is True
    assert (dest / "uncased_L-2_H-8_A-2" / "vocab.txt").read_bytes() == FILES["vocab.txt"]
    marker = json.loads((dest / MARKER).read_text())
    assert marker["url"] == site.url("/uncased.zip") and marker["sha256"] == hashlib.sha256(data).hexdigest()
    assert not [p for p in dest.iterdir() if p.name.startswith(".fetch-")]


def test_tar_gz_and_tgz(site, tmp_path):
    site.routes["/m.tar.gz"] = make_tar(FILES)
    site.routes["/m.tgz"] = make_tar(FILES, top="")
    fetch(site.url("/m.tar.gz"), tmp_path / "a")
    fetch(site.url("/m.tgz"), tmp_path / "b")
    assert (tmp_path / "a" / "model" / "bert_config.json").is_file()
    assert (tmp_path / "b" / "bert_model.ckpt.index").read_bytes() == b"idx"


def test_a_single_file_is_kept_under_its_name(site, tmp_path):
    site.routes["/files/bert_config.json"] = FILES["bert_config.json"]
    fetch(site.url("/files/bert_config.json"), tmp_path / "d")
    assert listing(tmp_path / "d") == {"bert_config.json", MARKER}


def test_second_run_with_the_same_arguments_downloads_nothing(site, tmp_path):
    site.routes["/m.zip"] = make_zip(FILES)
    assert fetch(site.url("/m.zip"), tmp_path / "d") is True
    assert fetch(site.url("/m.zip"), tmp_path / "d") is False
    assert site.hits["/m.zip"] == 1


def test_a_different_url_replaces_the_previous_fetch(site, tmp_path):
    site.routes["/one.zip"] = make_zip(FILES, top="one")
    site.routes["/two.zip"] = make_zip(FILES, top="two")
    fetch(site.url("/one.zip"), tmp_path / "d")
    fetch(site.url("/two.zip"), tmp_path / "d")
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"two", MARKER}


def test_sha256_mismatch_fails_and_leaves_nothing(site, tmp_path, capsys):
    site.routes["/m.zip"] = make_zip(FILES)
    dest = tmp_path / "d"
    code = main(["--url", site.url("/m.zip"), "--dest", str(dest), "--sha256", "0" * 64])
    assert code != 0
    err = capsys.readouterr().err
    assert (
        "sha256 mismatch" in err
        and "0" * 64 in err
        and hashlib.sha256(site.routes["/m.zip"]).hexdigest() in err
    )
    assert listing(dest) == set()


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("evil.zip", make_zip({"../../escape.txt": b"x"}, top="")),
        ("abs.zip", make_zip({"/etc/evil": b"x"}, top="")),
        ("evil.tar.gz", make_tar({"../escape.txt": b"x"}, top="")),
        ("link.tar.gz", make_tar(FILES, symlink="/etc/passwd")),
    ],
)
def test_unsafe_archives_are_refused(site, tmp_path, name, payload):
    site.routes[f"/{name}"] = payload
    dest = tmp_path / "inner" / "d"
    with pytest.raises(FetchError, match=r"refusing|unsafe"):
        fetch(site.url(f"/{name}"), dest)
    assert listing(dest) == set()
    assert not (tmp_path / "inner" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_credentials_come_from_the_auth_dir(site, tmp_path):
    site.routes["/private/m.zip"] = make_zip(FILES)
    with pytest.raises(FetchError, match=r"HTTP 401.*--auth-dir"):
        fetch(site.url("/private/m.zip"), tmp_path / "no-auth")
    token_dir = tmp_path / "secret-token"
    token_dir.mkdir()
    (token_dir / "token").write_text("s3cret\n")
    fetch(site.url("/private/m.zip"), tmp_path / "a", auth_dir=str(token_dir))
    header_dir = tmp_path / "secret-header"
    header_dir.mkdir()
    (header_dir / "authorization").write_text("Bearer s3cret")
    fetch(site.url("/private/m.zip"), tmp_path / "b", auth_dir=str(header_dir))
    assert (tmp_path / "b" / "uncased_L-2_H-8_A-2" / "vocab.txt").is_file()


def test_credentials_are_not_forwarded_on_redirect(site, tmp_path):
    site.routes["/m.zip"] = make_zip(FILES)
    token_dir = tmp_path / "secret"
    token_dir.mkdir()
    (token_dir / "token").write_text("s3cret")
    fetch(site.url("/redirect/m.zip"), tmp_path / "d", auth_dir=str(token_dir))
    assert site.auth_seen == ["Bearer s3cret", None]


def test_missing_file_is_a_clear_error(site, tmp_path, capsys):
    assert main(["--url", site.url("/nope.zip"), "--dest", str(tmp_path / "d")]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_console_script_and_progress_on_stderr(site, tmp_path):
    site.routes["/m.zip"] = make_zip(FILES)
    script = Path(sys.executable).with_name("bertserve-fetch")
    out = subprocess.run(
        [str(script), "--url", site.url("/m.zip"), "--dest", str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout == ""
    assert "downloaded" in out.stderr and "done:" in out.stderr


def test_only_http_urls(tmp_path):
    with pytest.raises(FetchError, match="http"):
        fetch("file:///etc/passwd", tmp_path / "d")


def test_the_url_can_come_from_the_environment_and_its_query_is_never_logged(
    site, tmp_path, monkeypatch, capsys
):
    """In a pod the operator passes the URL as BERTSERVE_FETCH_URL from a Secret (a pre-signed URL
    is a credential; arguments are readable by anyone who may read pods)."""
    assert manifests.FETCH_URL_ENV == URL_ENV  # the name the operator renders
    signed = "/m.zip?X-Amz-Signature=t0ps3cret"
    site.routes[signed] = make_zip(FILES)
    monkeypatch.setenv(URL_ENV, site.url(signed))
    assert main(["--dest", str(tmp_path / "d")]) == 0
    assert site.hits[signed] == 1
    site.routes.pop(signed)
    monkeypatch.setenv(URL_ENV, site.url("/gone.zip?X-Amz-Signature=t0ps3cret"))
    assert main(["--dest", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "/gone.zip?…" in err and "t0ps3cret" not in err
    monkeypatch.delenv(URL_ENV)
    with pytest.raises(SystemExit):
        main(["--dest", str(tmp_path / "f")])
    assert URL_ENV in capsys.readouterr().err
