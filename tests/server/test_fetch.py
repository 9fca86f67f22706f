"""``bertserve-fetch`` against a local HTTP server on 127.0.0.1: archives, checksums, auth, restarts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_site import Site, make_tar, make_zip

from bertserve_api import manifests
from bertserve_server.fetch import MARKER, URL_ENV, FetchError, fetch, main

FILES = {
    "bert_config.json": b'{"vocab_size": 10}',
    "vocab.txt": b"[PAD]\n[UNK]\n",
    "bert_model.ckpt.index": b"idx",
}


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


def listing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def test_zip_top_folder_is_unwrapped_into_dest_with_a_marker(site, tmp_path):
    data = make_zip(FILES)
    site.routes["/uncased.zip"] = data
    dest = tmp_path / "models" / "uncased_L-2_H-8_A-2"
    assert fetch(site.url("/uncased.zip"), dest, sha256=hashlib.sha256(data).hexdigest()) is True
    assert (dest / "vocab.txt").read_bytes() == FILES["vocab.txt"]
    assert listing(dest) == {*FILES, MARKER}
    marker = json.loads((dest / MARKER).read_text())
    assert marker["url"] == site.url("/uncased.zip") and marker["sha256"] == hashlib.sha256(data).hexdigest()
    assert not [p for p in dest.iterdir() if p.name.startswith(".fetch-")]


def test_tar_gz_and_tgz(site, tmp_path):
    site.routes["/m.tar.gz"] = make_tar(FILES)
    site.routes["/m.tgz"] = make_tar(FILES, top="")
    fetch(site.url("/m.tar.gz"), tmp_path / "a")
    fetch(site.url("/m.tgz"), tmp_path / "b")
    assert (tmp_path / "a" / "bert_config.json").is_file()
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


def test_a_different_url_replaces_the_previous_fetch_and_nothing_else(site, tmp_path):
    site.routes["/one.zip"] = make_zip({"old.index": b"1", "shared.txt": b"1"}, top="one")
    site.routes["/two.zip"] = make_zip({"new.index": b"2", "shared.txt": b"2"}, top="two")
    dest = tmp_path / "d"
    fetch(site.url("/one.zip"), dest)
    (dest / "notes.txt").write_text("mine")  # put there by a person, not by the fetch
    fetch(site.url("/two.zip"), dest)
    assert listing(dest) == {"new.index", "shared.txt", "notes.txt", MARKER}
    assert (dest / "shared.txt").read_bytes() == b"2"


def test_refetching_a_parent_never_deletes_a_sibling_fetch(site, tmp_path):
    """The issue's case: changing the pretrained URL must keep the fine-tuned folder beside it."""
    site.routes["/bundle-1.tar.gz"] = make_tar({"a/x": b"1", "b/y": b"1"}, top="")
    site.routes["/bundle-2.tar.gz"] = make_tar({"a/x": b"2", "c/z": b"2"}, top="")
    site.routes["/mrpc_output.tar.gz"] = make_tar({"model.ckpt-343.index": b"t"}, top="mrpc_output")
    models = tmp_path / "models"
    fetch(site.url("/bundle-1.tar.gz"), models)
    fetch(site.url("/mrpc_output.tar.gz"), models / "mrpc_output")
    fetch(site.url("/bundle-2.tar.gz"), models)
    assert listing(models) == {
        "a", "a/x", "c", "c/z", MARKER,
        "mrpc_output", "mrpc_output/model.ckpt-343.index", f"mrpc_output/{MARKER}",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("archive", "payload"),
    [
        ("google.zip", make_zip(FILES, top="uncased_L-2_H-8_A-2")),
        ("bare.tar.gz", make_tar(FILES, top="")),
        ("other-name.tgz", make_tar(FILES, top="output")),
        ("deep.tar.gz", make_tar(FILES, top="home/me/runs/mrpc_output")),
        (
            "finder.zip",
            make_zip({**{f"x/{k}": v for k, v in FILES.items()}, "__MACOSX/x/._vocab.txt": b"m"}, top=""),
        ),
    ],
)
def test_the_layout_does_not_depend_on_the_archives_top_folder(site, tmp_path, archive, payload):
    site.routes[f"/{archive}"] = payload
    dest = tmp_path / "models" / "uncased_L-2_H-8_A-2"
    fetch(site.url(f"/{archive}"), dest)
    assert listing(dest) == {*FILES, MARKER}


def test_a_bundle_of_several_folders_keeps_them(site, tmp_path):
    bundle = {f"uncased/{k}": v for k, v in FILES.items()} | {"mrpc_output/model.ckpt-343.index": b"t"}
    site.routes["/bundle.tgz"] = make_tar(bundle, top="bundle")
    fetch(site.url("/bundle.tgz"), tmp_path / "m")
    assert (tmp_path / "m" / "uncased" / "vocab.txt").is_file()
    assert (tmp_path / "m" / "mrpc_output" / "model.ckpt-343.index").is_file()


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
    assert (tmp_path / "b" / "vocab.txt").is_file()


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
