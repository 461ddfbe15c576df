"""The labelling web app: a standard-library HTTP server with a small JSON API over :class:`Annotator`.

Routes (all answers JSON unless noted; errors are ``{"error": message}`` with a 4xx status):

* ``GET /`` and ``GET /static/<file>``: the page (HTML, JS, CSS shipped with the package).
* ``GET /api/images``: ``{folder, target, images: [{name, labelled, gains, error}]}``.
* ``GET /api/image?name=N``: :meth:`Annotator.describe`.
* ``GET /api/render?name=N&r=R&b=B``: ``{temperature, image}``, the preview as a PNG data URL.
* ``POST /api/rectangle`` ``{name, rectangle: [x1, y1, x2, y2]}``: ``{gains, temperature}``.
* ``POST /api/save`` ``{name, gains: [r, b], method, rectangle}``: the label record.
* ``POST /api/undo`` ``{}``: the undo record.

Who may use it (every check answers 4xx before any work):

* **Token.** Unless started with ``token=False`` (``--no-token``), every request carries the random
  token of the printed address, as ``?token=...`` or in the cookie that opening that address sets
  (``HttpOnly; SameSite=Strict``; ``GET /?token=...`` answers 303 to ``/`` so the token leaves the
  address bar). Otherwise 403.
* **Host.** The ``Host`` header must name this server: on a loopback address a loopback IP or
  ``localhost`` (defeating DNS rebinding); off loopback also any IP literal and the machine's host
  name; always the names in ``allow_hosts``. Otherwise 403 (400 when malformed or missing).
* **Cross-site requests.** A POST whose ``Sec-Fetch-Site`` is not ``same-origin``/``none``, or whose
  ``Origin`` is not this server as the ``Host`` names it, is refused (403); POST bodies must be
  ``application/json`` (which a cross-site form cannot send and no CORS answer allows) with a
  ``Content-Length`` (411 without one). Pages may not be framed by other sites.
* **Slow clients.** Each connection is served by its own thread and closed after ``timeout`` seconds
  without progress.
"""

from __future__ import annotations

import base64
import hmac
import http.cookies
import http.server
import ipaddress
import json
import re
import secrets
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
#: Seconds a connection may stall (sending its request, reading the answer, idling between requests).
DEFAULT_TIMEOUT = 30.0
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_PORT = re.compile(r":[0-9]{1,5}")


class _RequestError(IsplabError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _ip_or_none(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_host(value: str) -> str | None:
    """The host named by a ``Host`` header, lower case, an IPv6 address without its brackets
    (``[::1]:8000`` and ``[::1]`` give ``::1``); None when malformed (a bare IPv6 address, a bad port,
    characters no host name has)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end], value[end + 1 :]
        if end < 0 or not isinstance(_ip_or_none(host), ipaddress.IPv6Address):
            return None
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
        if not (_ip_or_none(host) is not None or _HOST_NAME.fullmatch(host.removesuffix("."))):
            return None
        host = host.removesuffix(".")
    if rest and not _PORT.fullmatch(rest):
        return None
    return host


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # --- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (_SECURITY_HEADERS | (headers or {})).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        if status >= 400:
            self.close_connection = True  # a refused request's body may be unread: don't parse it as the next one
        self._send(status, json.dumps(data).encode(), "application/json")

    def _check_host(self) -> None:
        header = self.headers.get("Host")
        if header is None:
            raise _RequestError(400, "missing Host header")
        host = parse_host(header)
        if host is None:
            raise _RequestError(400, f"malformed Host header {header!r}")
        if not self.server.allows_host(host):
            raise _RequestError(403, f"host {host!r} refused: {self.server.host_rule()}")

    def _given_token(self, query: dict) -> str | None:
        if query.get("token"):
            return query["token"][0]
        cookies = http.cookies.SimpleCookie()
        try:
            cookies.load("; ".join(self.headers.get_all("Cookie") or []))
        except http.cookies.CookieError:
            return None
        morsel = cookies.get(self.server.cookie_name)
        return morsel.value if morsel else None

    def _check_token(self, query: dict) -> None:
        if self.server.token is None:
            return
        given = self._given_token(query)
        if given is None or not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise _RequestError(
                403, "missing or wrong token: open the address that `isplab awb annotate` printed "
                "(it ends in ?token=...)",
            )

    def _check_same_origin(self) -> None:
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            raise _RequestError(403, f"cross-site request refused (Sec-Fetch-Site: {site!r})")
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() != f"http://{self.headers['Host'].strip().lower()}":
            raise _RequestError(403, f"request from another site refused (Origin: {origin!r})")

    def _body(self) -> dict:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _RequestError(415, "POST bodies must be JSON (Content-Type: application/json)")
        header = self.headers.get("Content-Length")
        if header is None or "Transfer-Encoding" in self.headers:
            raise _RequestError(411, "POST needs a Content-Length header (chunked bodies are not accepted)")
        if not re.fullmatch(r"[0-9]+", header.strip()):
            raise _RequestError(400, f"bad Content-Length {header!r}")
        length = int(header)
        if length > _MAX_BODY:
            raise _RequestError(413, f"request body must be at most {_MAX_BODY} bytes")
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raise _RequestError(408, f"request body not received within {self.server.request_timeout:g} s") from None
        try:
            data = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise _RequestError(400, f"malformed JSON body: {e}") from None
        if not isinstance(data, dict):
            raise _RequestError(400, "the JSON body must be an object")
        return data

    def _handle(self, routes: dict, *, changes_state: bool = False) -> None:
        try:
            self._check_host()
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            self._check_token(query)
            if changes_state:
                self._check_same_origin()
            if url.path == "/" and "token" in query and self.server.token is not None and not changes_state:
                # Keep the token in a cookie and take it out of the address bar (and history).
                cookie = f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"
                self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})
                return
            route = routes.get(url.path)
            if route is None:
                raise _RequestError(404, f"no such page: {url.path}")
            route(query)
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
        self._handle(
            {"/api/rectangle": self._rectangle, "/api/save": self._save, "/api/undo": self._undo}, changes_state=True
        )

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

    def __init__(
        self, address, annotator: Annotator, verbose: bool, token: str | None, allow_hosts: frozenset[str],
        timeout: float,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.annotator = annotator
        self.verbose = verbose
        self.token = token
        self.request_timeout = timeout
        self.loopback = _is_loopback(self.server_address[0])  # the address bound, whatever name asked for it
        self.allowed_names = {"localhost"} | allow_hosts
        if not self.loopback:
            self.allowed_names.add(socket.gethostname().lower())
        # Cookies are shared by all ports of a host: one name per port keeps two annotators apart.
        self.cookie_name = f"isplab-annotate-{self.server_address[1]}"

    def allows_host(self, host: str) -> bool:
        """Whether a request naming ``host`` (as :func:`parse_host` gives it) is answered."""
        ip = _ip_or_none(host)
        if ip is None:
            return host in self.allowed_names
        # An IP literal cannot be a rebinding attacker's name; on loopback only loopback ones.
        return ip.is_loopback or not self.loopback

    def host_rule(self) -> str:
        names = ", ".join(sorted(self.allowed_names))
        if self.loopback:
            return f"this server answers only to a loopback address or {names}"
        return f"this server answers only to an IP address or {names} (add names with --allow-host)"

    @property
    def url(self) -> str:
        """The page's address, with the token when one is required (what ``run`` prints)."""
        host, port = self.server_address[:2]
        if ipaddress.ip_address(host).is_unspecified:  # every interface: other machines use the host name
            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/" + (f"?token={self.token}" if self.token else "")

    def warnings(self) -> list[str]:
        """What the operator must know about who can reach this server (printed by ``run``)."""
        host = self.server_address[0]
        if not self.loopback and self.token:
            return [
                f"warning: listening on {host}, reachable from other machines over plain HTTP: anyone who "
                "sees the address below (its token) can rename the DNGs"
            ]
        if not self.loopback:
            return [
                f"warning: listening on {host} with --no-token, reachable from other machines: anyone who "
                "can reach this port can rename the DNGs"
            ]
        if not self.token:
            return ["warning: --no-token: every user and program on this machine can rename the DNGs"]
        return []


def serve(
    folder: str | Path,
    target: str = "pisp",
    tuning_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: bool = True,
    allow_hosts: tuple[str, ...] | list[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    verbose: bool = False,
) -> _Server:
    """Start the labelling server for ``folder`` in a background thread.

    Args:
        port: 0 picks a free port (read it from ``server.url``).
        token: require a random token (``server.token``, in ``server.url``) on every request.
        allow_hosts: more host names the ``Host`` header may give (see the module's docstring).
        timeout: seconds a connection may stall before it is closed.
        verbose: log each request to stderr.

    Returns:
        The running server: ``server.url`` is the page's address, ``server.annotator`` the labelling
        state; stop it with ``server.shutdown(); server.server_close()``.

    Raises:
        IsplabError: the folder does not exist, unknown target, a bad host name in ``allow_hosts``,
            or the address cannot be bound.
    """
    annotator = Annotator(folder, target, tuning_dir)
    names = set()
    for name in allow_hosts:
        parsed = parse_host(name)
        if parsed is None or parsed != name.strip().lower().removesuffix(".") or _ip_or_none(parsed) is not None:
            raise IsplabError(
                f"bad --allow-host {name!r}: expected a host name such as box.lan (no port; IP addresses need none)"
            )
        names.add(parsed)
    secret = secrets.token_urlsafe(24) if token else None
    try:
        server = _Server((host, port), annotator, verbose, secret, frozenset(names), timeout)
    except (OSError, ValueError) as e:
        raise IsplabError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from e
    # A short poll keeps shutdown() quick.
    threading.Thread(target=server.serve_forever, args=(0.1,), name="isplab-annotate", daemon=True).start()
    return server


def run(
    folder: str | Path,
    target: str = "pisp",
    tuning_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: bool = True,
    allow_hosts: tuple[str, ...] | list[str] = (),
    print=print,  # noqa: A002 (the CLI passes its console's)
) -> None:
    """Serve ``folder`` until Ctrl-C, printing the page's address (what ``isplab awb annotate`` runs)."""
    server = serve(folder, target, tuning_dir, host, port, token=token, allow_hosts=allow_hosts, verbose=True)
    try:  # Ctrl-C from here on, even while the address is being printed, stops the server cleanly
        for line in server.warnings():
            print(line)
        count = len(server.annotator.names())
        print(f"labelling {count} DNGs in {server.annotator.folder}: open {server.url} (Ctrl-C to stop)")
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
