"""A loopback HTTP site serving model archives, and builders for the archives themselves.

Shared by the ``bertserve-fetch`` tests and the test that runs the documented model-copy Job's
command, so both exercise the same archive shapes (Google's zip, ``tar czf x.tar.gz x/``).
"""

from __future__ import annotations

import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
