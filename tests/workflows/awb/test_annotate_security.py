"""``isplab awb annotate``: who may use the server, and what a tampered ``labels.json`` may not do.

Every request here is raw HTTP (``http.client`` with hand-set headers, or a bare socket) to a server
started by the test; the tests connect to loopback addresses only (a server bound to ``0.0.0.0`` is
reached through ``127.0.0.1``). Undo never reads a DNG's pixels, so the files here are small stand-ins
with the names the annotator gives.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isplab.errors import IsplabError
from isplab.workflows.awb.annotate import LABELS_FILE, serve
from isplab.workflows.awb.annotate.server import parse_host

ORIGINAL = "alice,sim,0.dng"
LABELLED = "alice,sim,0,1.2000,2.5000.dng"
CONTENT = b"stand-in for a DNG"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _save_record(original: object = ORIGINAL, name: object = LABELLED) -> dict:
    return {
        "action": "save", "original": original, "name": name, "gains": [1.2, 2.5], "method": "manual",
        "rectangle": None, "temperature": 4000.0, "time": "2024-01-01T00:00:00+00:00",
    }


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A labelled capture and its labels file: undo would rename it back to :data:`ORIGINAL`."""
    folder = tmp_path / "dngs"
    folder.mkdir()
    (folder / LABELLED).write_bytes(CONTENT)
    (folder / "alice,sim,1.dng").write_bytes(CONTENT)
    (folder / LABELS_FILE).write_text(json.dumps({"version": 1, "records": [_save_record()]}))
    return folder


def _start(folder, host="127.0.0.1", **options):
    server = serve(folder, "pisp", host=host, **options)
    return server


@pytest.fixture()
def server(folder):
    server = _start(folder)
    yield server
    server.shutdown()
    server.server_close()


def _send(server, method: str, path: str, *, headers=None, body: bytes | None = None, connect="127.0.0.1",
          host_header: str | None = "default", token: bool = True, length: bool = True):
    """One request with exactly these headers: ``Host`` is the address connected to unless
    ``host_header`` says otherwise (None: no Host header); the token goes in the query when ``token``;
    ``Content-Length`` is set for a body unless ``length`` is False."""
    port = server.server_address[1]
    if token and server.token:
        path += ("&" if "?" in path else "?") + f"token={server.token}"
    connection = http.client.HTTPConnection(connect, port, timeout=30)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host_header == "default":
        host_header = f"[{connect}]:{port}" if ":" in connect else f"{connect}:{port}"
    if host_header is not None:
        connection.putheader("Host", host_header)
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    if body is not None and length:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        data = json.loads(data)
    return response, data


def _undo(server, headers=None, **options):
    headers = {"Content-Type": "application/json"} | (headers or {})
    return _send(server, "POST", "/api/undo", headers=headers, body=b"{}", **options)


def _undone(folder) -> bool:
    """Whether the undo happened (else nothing was renamed)."""
    if (folder / ORIGINAL).exists():
        assert not (folder / LABELLED).exists()
        return True
    assert (folder / LABELLED).read_bytes() == CONTENT
    return False


# --- 1. undo trusts nothing in labels.json ---------------------------------------------------------


def test_undo_renames_back_with_a_valid_labels_file(server, folder):
    response, record = _undo(server)
    assert response.status == 200
    assert (record["action"], record["name"], record["labelled"]) == ("undo", ORIGINAL, LABELLED)
    assert _undone(folder) and (folder / ORIGINAL).read_bytes() == CONTENT


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([_save_record(original="../escaped.dng")], r"record 0 'original': '\.\./escaped\.dng' is not a plain file name \(no folders, no '\.\.'\)"),
        ([_save_record(original="/tmp/escaped.dng")], r"record 0 'original': '/tmp/escaped\.dng' is not a plain file name \(no folders, no '\.\.'\)"),
        ([_save_record(original="sub\\escaped.dng")], r"record 0 'original': .* is not a plain file name \(no folders, no '\.\.'\)"),
        ([_save_record(original="..")], r"record 0 'original': '\.\.' is not a plain file name \(no folders, no '\.\.'\)"),
        ([_save_record(original="escaped.txt")], r"record 0 'original': 'escaped\.txt' is not a \.dng file name"),
        ([_save_record(original=7)], r"record 0 'original': expected a file name, got 7"),
        ([_save_record(original=None)], r"record 0 'original': expected a file name, got None"),
        ([_save_record(name="../outside.dng")], r"record 0 'name': '\.\./outside\.dng' is not a plain file name \(no folders, no '\.\.'\)"),
        ([{"action": "save", "name": LABELLED}], r"record 0 'original': expected a file name, got None"),
        ([_save_record(), {"action": "undo", "name": ORIGINAL, "labelled": "../x.dng"}, _save_record()],
         r"record 1 'labelled': '\.\./x\.dng' is not a plain file name \(no folders, no '\.\.'\)"),
        ([_save_record(), "save"], r"record 1 is str, expected an object"),
        ([{**_save_record(), "action": "rename"}], r"record 0 has action 'rename', expected 'save' or 'undo'"),
    ],
)
def test_undo_refuses_a_tampered_labels_file(server, folder, records, match):
    (folder.parent / "outside.dng").write_bytes(b"outside")
    (folder / LABELS_FILE).write_text(json.dumps({"version": 1, "records": records}))
    before = sorted(p.name for p in folder.parent.rglob("*"))
    labels = (folder / LABELS_FILE).read_bytes()

    response, data = _undo(server)
    assert response.status == 409
    assert re.fullmatch(rf"malformed labels file {re.escape(str(folder / LABELS_FILE))}: {match}; nothing was renamed",
                        data["error"]), data["error"]
    assert sorted(p.name for p in folder.parent.rglob("*")) == before  # nothing renamed, in or out of the folder
    assert (folder / LABELS_FILE).read_bytes() == labels
    assert (folder.parent / "outside.dng").read_bytes() == b"outside"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"cannot read labels file .*: Expecting property name"),
        ("[]", r"malformed labels file .*: expected an object \{\"records\": \[\.\.\.\]\}"),
        ('{"records": {"0": {}}}', r"malformed labels file .*: expected an object \{\"records\": \[\.\.\.\]\}"),
        ('{"records": [1]}', r"malformed labels file .*: record 0 is int, expected an object"),
    ],
)
def test_undo_refuses_a_corrupt_labels_file(server, folder, content, match):
    (folder / LABELS_FILE).write_text(content)
    response, data = _undo(server)
    assert response.status == 409
    assert re.match(match, data["error"]) and "\n" not in data["error"]
    assert LABELS_FILE in data["error"]
    assert not _undone(folder)
    assert (folder / LABELS_FILE).read_text() == content


def test_undo_refuses_a_labelled_name_that_is_a_symlink_out_of_the_folder(server, folder, tmp_path):
    outside = tmp_path / "secret.dng"
    outside.write_bytes(b"secret")
    (folder / "link.dng").symlink_to(outside)
    (folder / LABELS_FILE).write_text(json.dumps({"version": 1, "records": [_save_record(name="link.dng")]}))
    response, data = _undo(server)
    assert response.status == 409 and data["error"] == f"cannot rename 'link.dng': it is no longer in {folder}"
    assert (folder / "link.dng").is_symlink() and not (folder / ORIGINAL).exists()
    assert outside.read_bytes() == b"secret"


# --- 2. token ---------------------------------------------------------------------------------------


def test_every_request_needs_the_token(server):
    port = server.server_address[1]
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=[A-Za-z0-9_-]{{32}}", server.url)
    assert server.url.endswith(server.token)
    for path in ("/", "/static/annotate.js", "/api/images"):
        response, data = _send(server, "GET", path, token=False)
        assert response.status == 403 and "missing or wrong token" in data["error"], path
    response, data = _send(server, "GET", f"/api/images?token={server.token[:-1]}x", token=False)
    assert response.status == 403
    response, data = _undo(server, token=False)
    assert response.status == 403
    response, data = _send(server, "GET", "/api/images")  # the token in the query
    assert response.status == 200 and data["images"][0]["name"] == "alice,sim,0,1.2000,2.5000.dng"


def test_the_printed_address_sets_a_cookie_and_drops_the_token(server, folder):
    response, _ = _send(server, "GET", "/")
    assert response.status == 303 and response.getheader("Location") == "/"
    cookie = response.getheader("Set-Cookie")
    name = f"isplab-annotate-{server.server_address[1]}"
    assert cookie == f"{name}={server.token}; Path=/; HttpOnly; SameSite=Strict"
    for path in ("/", "/api/images"):
        response, data = _send(server, "GET", path, headers={"Cookie": f"other=1; {name}={server.token}"}, token=False)
        assert response.status == 200, path
    response, data = _undo(server, headers={"Cookie": f"{name}={server.token}"}, token=False)
    assert response.status == 200 and _undone(folder)
    # A wrong cookie, or the right token under another server's (port's) cookie name, is refused.
    for cookie in (f"{name}=nope", f"isplab-annotate-1={server.token}", 'bad"cookie'):
        response, data = _send(server, "GET", "/api/images", headers={"Cookie": cookie}, token=False)
        assert response.status == 403, cookie


def test_no_token_serves_anyone_who_passes_the_other_checks(folder):
    server = _start(folder, token=False)
    try:
        assert server.token is None and server.url == f"http://127.0.0.1:{server.server_address[1]}/"
        assert server.warnings() == ["warning: --no-token: every user and program on this machine can rename the DNGs"]
        response, data = _send(server, "GET", "/api/images", token=False)
        assert response.status == 200
        response, data = _send(server, "GET", "/api/images", host_header="evil.example")
        assert response.status == 403
    finally:
        server.shutdown()
        server.server_close()


def test_tokens_are_random(folder):
    servers = [_start(folder) for _ in range(2)]
    try:
        assert servers[0].token != servers[1].token
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# --- 2. Host allow-list -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("127.0.0.1", "127.0.0.1"), ("127.0.0.1:8000", "127.0.0.1"), ("LocalHost:80", "localhost"),
        ("localhost.", "localhost"), ("[::1]", "::1"), ("[::1]:8000", "::1"), ("[FE80::1]:1", "fe80::1"),
        ("box.lan", "box.lan"), ("::1", None), ("[::1", None), ("[::1]8000", None), ("[127.0.0.1]", None),
        ("127.0.0.1:", None), ("127.0.0.1:80:80", None), ("127.0.0.1:http", None), ("", None),
        ("evil.example/x", None), ("a b", None), ("host:١٢", None),
    ],
)
def test_host_header_parsing(value, host):
    assert parse_host(value) == host


@pytest.mark.parametrize(
    ("host_header", "status"),
    [
        ("default", 200), ("localhost:{port}", 200), ("LOCALHOST", 200), ("[::1]:{port}", 200), ("[::1]", 200),
        ("127.0.0.2", 200),
        ("evil.example", 403), ("evil.example:{port}", 403), ("192.168.1.5:{port}", 403), ("{hostname}", 403),
        ("box.lan", 403),
        ("::1", 400), ("[::1", 400), ("127.0.0.1:x", 400), ("", 400), (None, 400),
    ],
)
def test_loopback_server_answers_only_to_loopback_names(server, host_header, status):
    if host_header not in ("default", None):
        host_header = host_header.format(port=server.server_address[1], hostname=socket.gethostname())
    response, data = _send(server, "GET", "/api/images", host_header=host_header)
    assert response.status == status, data
    if status == 403:
        assert "refused: this server answers only to a loopback address or localhost" in data["error"]


def test_allowed_host_names(folder):
    server = _start(folder, allow_hosts=["Box.LAN"])
    try:
        response, _ = _send(server, "GET", "/api/images", host_header="box.lan:8000")
        assert response.status == 200
        response, _ = _send(server, "GET", "/api/images", host_header="other.lan")
        assert response.status == 403
    finally:
        server.shutdown()
        server.server_close()
    for bad in ("box.lan:8000", "10.0.0.1", "bad host", "[::1]"):
        with pytest.raises(IsplabError, match="bad --allow-host"):
            serve(folder, "pisp", allow_hosts=[bad])


@pytest.fixture()
def public_server(folder):
    """A server on every interface (as ``--host 0.0.0.0``), reached here through 127.0.0.1 only."""
    server = _start(folder, host="0.0.0.0")
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("host_header", "status"),
    [
        ("default", 200), ("localhost:{port}", 200), ("192.168.1.5:{port}", 200), ("[fe80::1]:{port}", 200),
        ("{hostname}:{port}", 200), ("{hostname}", 200),
        ("evil.example", 403), ("evil.example:{port}", 403), ("{hostname}.evil.example", 403), ("::1", 400),
    ],
)
def test_public_server_answers_to_ip_addresses_and_its_host_name(public_server, host_header, status):
    """Off loopback any IP literal is fine (a DNS-rebinding page sends its own domain name), names are not."""
    if host_header != "default":
        host_header = host_header.format(port=public_server.server_address[1], hostname=socket.gethostname())
    response, data = _send(public_server, "GET", "/api/images", host_header=host_header)
    assert response.status == status, data
    if status == 403:
        assert "this server answers only to an IP address or" in data["error"] and "--allow-host" in data["error"]


def test_public_server_warns_and_still_needs_the_token(public_server):
    port = public_server.server_address[1]
    assert public_server.warnings() == [
        "warning: listening on 0.0.0.0, reachable from other machines over plain HTTP: anyone who sees the "
        "address below (its token) can rename the DNGs"
    ]
    assert public_server.url == f"http://{socket.gethostname()}:{port}/?token={public_server.token}"
    response, data = _send(public_server, "GET", "/api/images", token=False)
    assert response.status == 403 and "missing or wrong token" in data["error"]


def test_public_server_without_token_warns_louder(folder):
    server = _start(folder, host="0.0.0.0", token=False)
    try:
        assert server.warnings() == [
            "warning: listening on 0.0.0.0 with --no-token, reachable from other machines: anyone who can reach "
            "this port can rename the DNGs"
        ]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_loopback_server(folder):
    server = _start(folder, host="::1")
    try:
        port = server.server_address[1]
        assert server.url == f"http://[::1]:{port}/?token={server.token}"
        for host_header, status in (("default", 200), ("[::1]", 200), ("127.0.0.1", 200), ("evil.example", 403),
                                    ("::1", 400)):
            response, data = _send(server, "GET", "/api/images", connect="::1", host_header=host_header)
            assert response.status == status, (host_header, data)
        response, data = _undo(server, connect="::1", headers={"Origin": f"http://[::1]:{port}"})
        assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()


# --- 2. cross-site requests, bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),  # not a browser (curl, a script): the token is the check
        ({"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://127.0.0.1:1"}, 403),  # another port of this host: same site, other origin
        ({"Origin": "https://127.0.0.1:{port}"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"}, 403),
    ],
)
def test_state_changing_requests_from_other_sites_are_refused(server, folder, headers, status):
    headers = {key: value.format(port=server.server_address[1]) for key, value in headers.items()}
    response, data = _undo(server, headers=headers)
    assert response.status == status, data
    assert _undone(folder) == (status == 200)
    if status == 403:
        assert "refused" in data["error"]


def test_post_needs_a_content_length(server, folder):
    response, data = _undo(server, length=False)
    assert response.status == 411 and "Content-Length" in data["error"]
    response, data = _send(server, "POST", "/api/undo", body=b"2\r\n{}\r\n0\r\n\r\n", length=False,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status == 411
    response, data = _send(server, "POST", "/api/undo", body=b"{}",  # both: refused, not guessed
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status == 411
    response, data = _undo(server, headers={"Content-Length": "1_0"}, length=False)
    assert response.status == 400 and "bad Content-Length" in data["error"]
    response, data = _send(server, "POST", "/api/undo", body=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status == 415
    assert not _undone(folder)


def test_pages_cannot_be_framed_by_other_sites(server):
    response, _ = _send(server, "GET", "/")
    response, data = _send(server, "GET", "/", headers={"Cookie": response.getheader("Set-Cookie").split(";")[0]},
                           token=False)
    assert response.status == 200 and data.startswith(b"<!doctype html>")
    assert response.getheader("X-Frame-Options") == "DENY"
    assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy")


# --- 2. slow clients ---------------------------------------------------------------------------------


def test_a_stalled_connection_is_closed_and_does_not_hold_the_server(folder):
    server = _start(folder, timeout=2.0)
    try:
        port = server.server_address[1]
        stalled = []
        token = server.token
        for partial in (f"GET /api/images?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never finished
                        f"POST /api/undo?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        "Content-Length: 10\r\n\r\n{"):  # body never finished
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            sock.sendall(partial.encode())
            stalled.append(sock)
        # Meanwhile other clients are served at once (each connection has its own thread).
        start = time.monotonic()
        response, _ = _send(server, "GET", "/api/images")
        assert response.status == 200 and time.monotonic() - start < 1.5
        start = time.monotonic()
        for sock, answer in zip(stalled, (b"", b"HTTP/1.1 408 "), strict=True):
            try:
                received = b""
                while chunk := sock.recv(4096):  # until the server closes the connection
                    received += chunk
            finally:
                sock.close()
            assert received.startswith(answer) and (answer or received == b"")
        assert time.monotonic() - start < 10
        assert not _undone(folder)
    finally:
        server.shutdown()
        server.server_close()


# --- the command --------------------------------------------------------------------------------------


def _cli(folder, *options):
    """Start ``isplab awb annotate`` and return it with its printed lines up to the address."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="400")
    process = subprocess.Popen(
        [sys.executable, "-m", "isplab.cli", "awb", "annotate", str(folder), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "open http" in line:
            return process, lines
    process.kill()
    raise AssertionError(f"no address printed: {lines} {process.stderr.read()[-2000:]}")


def _stop(process) -> None:
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr[-3000:]
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("options", [(), ("--host", "0.0.0.0"), ("--no-token",)])
def test_command_prints_an_address_that_works(folder, options):
    process, lines = _cli(folder, "--port", "0", *options)
    try:
        match = re.search(r"open (http://(\S+):(\d+)/(\?token=(\S+))?) \(Ctrl-C to stop\)", lines[-1])
        assert match, lines
        assert lines[-1].startswith(f"labelling 2 DNGs in {folder}")
        _, host, port, _, token = match.groups()
        warnings = lines[:-1]
        if options == ("--host", "0.0.0.0"):
            assert host == socket.gethostname() and token
            assert warnings == [
                "warning: listening on 0.0.0.0, reachable from other machines over plain HTTP: anyone who sees the "
                "address below (its token) can rename the DNGs"
            ]
        elif options == ("--no-token",):
            assert host == "127.0.0.1" and token is None
            assert warnings == ["warning: --no-token: every user and program on this machine can rename the DNGs"]
        else:
            assert host == "127.0.0.1" and token and warnings == []
        connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
        connection.request("GET", "/api/images" + (f"?token={token}" if token else ""), headers={"Host": f"{host}:{port}"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["folder"] == str(folder)
        connection.close()
        if token:
            connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
            connection.request("GET", "/api/images")
            assert connection.getresponse().status == 403
            connection.close()
    finally:
        _stop(process)
