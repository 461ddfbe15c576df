"""The labelling web app: a standard-library HTTP server with a small JSON API over :class:`Annotator`.

Routes (all answers JSON unless noted; errors are ``{"error": message}`` with a 4xx status):

* ``GET /`` and ``GET /static/<file>``: the page (HTML, JS, CSS shipped with the package).
* ``GET /api/images``: ``{folder, target, images: [{name, labelled, gains, error}]}``.
* ``GET /api/image?name=N``: :meth:`Annotator.describe`.
* ``GET /api/render?name=N&r=R&b=B``: ``{temperature, image}``, the preview as a PNG data URL.
* ``POST /api/rectangle`` ``{name, rectangle: [x1, y1, x2, y2]}``: ``{gains, temperature}``.
* ``POST /api/save`` ``{name, gains: [r, b], method, rectangle}``: the label record.
* ``POST /api/undo`` ``{}``: the undo record.

A browser page from another site cannot use the API: POSTs must be ``application/json`` (which a
cross-site form cannot send and no CORS answer allows), and on a loopback address requests must
name the server by a loopback host (defeating DNS rebinding).
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import socket
import threading
import urllib.parse
from importlib import resources
from pathlib import Path

from isplab.errors import IsplabError
from isplab.workflows.awb.annotate.annotator import Annotator, ConflictError, NotFoundError, check_gains

__all__ = ["run", "serve"]

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/annotate.js": ("annotate.js", "text/javascript; charset=utf-8"),
    "/static/annotate.css": ("annotate.css", "text/css; charset=utf-8"),
}
_MAX_BODY = 64 * 1024


class _RequestError(IsplabError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # --- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        if status >= 400:
            self.close_connection = True  # a refused request's body may be unread: don't parse it as the next one
        self._send(status, json.dumps(data).encode(), "application/json")

    def _check_host(self) -> None:
        if not self.server.loopback:
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if not _is_loopback(host):
            raise _RequestError(403, f"host {host!r} refused: this server answers only on a loopback address")

    def _body(self) -> dict:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise _RequestError(415, "POST bodies must be JSON (Content-Type: application/json)")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise _RequestError(400, "bad Content-Length") from None
        if not 0 <= length <= _MAX_BODY:
            raise _RequestError(413, f"request body must be at most {_MAX_BODY} bytes")
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise _RequestError(400, f"malformed JSON body: {e}") from None
        if not isinstance(data, dict):
            raise _RequestError(400, "the JSON body must be an object")
        return data

    def _handle(self, routes: dict) -> None:
        try:
            self._check_host()
            url = urllib.parse.urlsplit(self.path)
            route = routes.get(url.path)
            if route is None:
                raise _RequestError(404, f"no such page: {url.path}")
            route(urllib.parse.parse_qs(url.query))
        except _RequestError as e:
            self._json({"error": str(e)}, e.status)
        except NotFoundError as e:
            self._json({"error": str(e)}, 404)
        except ConflictError as e:
            self._json({"error": str(e)}, 409)
        except IsplabError as e:
            self._json({"error": str(e)}, 400)
        except Exception as e:  # a broken file must not take the server down: report it
            self.log_error("%s: %s", type(e).__name__, e)
            self._json({"error": f"{type(e).__name__}: {e}"}, 500)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        routes = {path: self._static(path) for path in _STATIC}
        routes |= {"/api/images": self._images, "/api/image": self._image, "/api/render": self._render}
        self._handle(routes)

    def do_POST(self) -> None:  # noqa: N802
        self._handle({"/api/rectangle": self._rectangle, "/api/save": self._save, "/api/undo": self._undo})

    # --- routes --------------------------------------------------------------------------------

    def _static(self, path: str):
        def send(query) -> None:
            filename, content_type = _STATIC[path]
            self._send(200, (resources.files(__package__) / "static" / filename).read_bytes(), content_type)

        return send

    @staticmethod
    def _param(query: dict, key: str) -> str:
        values = query.get(key)
        if not values:
            raise _RequestError(400, f"missing query parameter {key!r}")
        return values[0]

    def _images(self, query) -> None:
        annotator = self.server.annotator
        self._json({"folder": str(annotator.folder), "target": annotator.target, "images": annotator.listing()})

    def _image(self, query) -> None:
        self._json(self.server.annotator.describe(self._param(query, "name")))

    def _render(self, query) -> None:
        annotator = self.server.annotator
        name = self._param(query, "name")
        gains = check_gains((self._param(query, "r"), self._param(query, "b")))
        png = annotator.preview(name, gains)
        image = "data:image/png;base64," + base64.b64encode(png).decode()
        self._json({"temperature": annotator.temperature(name, gains), "image": image})

    def _rectangle(self, query) -> None:
        body = self._body()
        annotator = self.server.annotator
        name = body.get("name")
        gains = annotator.rectangle_gains(name, body.get("rectangle"))
        self._json({"gains": list(gains), "temperature": annotator.temperature(name, gains)})

    def _save(self, query) -> None:
        body = self._body()
        record = self.server.annotator.save(
            body.get("name"), body.get("gains"), body.get("method"), body.get("rectangle")
        )
        self._json(record)

    def _undo(self, query) -> None:
        self._body()
        self._json(self.server.annotator.undo())


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, annotator: Annotator, verbose: bool) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.annotator = annotator
        self.verbose = verbose
        self.loopback = _is_loopback(address[0])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def serve(
    folder: str | Path,
    target: str = "pisp",
    tuning_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    verbose: bool = False,
) -> _Server:
    """Start the labelling server for ``folder`` in a background thread.

    Args:
        port: 0 picks a free port (read it from ``server.url``).
        verbose: log each request to stderr.

    Returns:
        The running server: ``server.url`` is the page's address, ``server.annotator`` the labelling
        state; stop it with ``server.shutdown(); server.server_close()``.

    Raises:
        IsplabError: the folder does not exist, unknown target, or the address cannot be bound.
    """
    annotator = Annotator(folder, target, tuning_dir)
    try:
        server = _Server((host, port), annotator, verbose)
    except OSError as e:
        raise IsplabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    # A short poll keeps shutdown() quick.
    threading.Thread(target=server.serve_forever, args=(0.1,), name="isplab-annotate", daemon=True).start()
    return server


def run(
    folder: str | Path,
    target: str = "pisp",
    tuning_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    print=print,  # noqa: A002 (the CLI passes its console's)
) -> None:
    """Serve ``folder`` until Ctrl-C, printing the page's address (what ``isplab awb annotate`` runs)."""
    server = serve(folder, target, tuning_dir, host, port, verbose=True)
    count = len(server.annotator.names())
    print(f"labelling {count} DNGs in {server.annotator.folder}: open {server.url} (Ctrl-C to stop)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
