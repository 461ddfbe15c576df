"""``isplab awb annotate``: the labelling API over HTTP, and the real page in headless Chromium.

Scenes are synthetic DNGs of isplab's simulated Pi sensor (:mod:`isplab.workflows.awb.synthetic`):
a flat grey patch lit at a known colour temperature T, so after black level the patch's R/G and
B/G are the tuning's CT curve at T and the right gains are their reciprocals.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io import RawImage, write_dng
from isplab.workflows.awb.annotate import LABELS_FILE, Annotator, serve
from isplab.workflows.awb.convert import convert_folder, parse_annotated_name
from isplab.workflows.awb.synthetic import BLACK_LEVEL, SENSOR, WHITE_LEVEL, write_tuning_dir
from isplab.workflows.awb.tuning import find_tuning, load_tuning

T_PATCH = 4200.0
# The grey patch in raw pixels (x1, y1, x2, y2) of a 640x480 mosaic.
PATCH = (200, 160, 440, 320)
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def tuning_dir(tmp_path_factory) -> Path:
    return write_tuning_dir(tmp_path_factory.mktemp("tuning"))


@pytest.fixture(scope="module")
def tuning(tuning_dir):
    return load_tuning(find_tuning(SENSOR, "pisp", tuning_dir))


def _scene(path: Path, tuning, ct: float, seed: int) -> Path:
    """A 640x480 RGGB DNG: random colour blocks lit at ``ct``, with a flat grey patch at :data:`PATCH`."""
    rng = np.random.default_rng(seed)
    r, b = tuning.gains_at(ct)
    light = np.array([r, 1.0, b])
    blocks = rng.uniform(0.05, 0.6, size=(6, 8, 3))
    reflectance = cv2.resize(blocks, (320, 240), interpolation=cv2.INTER_NEAREST)
    x1, y1, x2, y2 = (v // 2 for v in PATCH)
    reflectance[y1:y2, x1:x2] = 0.35
    camera = reflectance * light * (WHITE_LEVEL - BLACK_LEVEL)  # (240, 320, 3) camera RGB above black
    mosaic = np.empty((480, 640))
    mosaic[0::2, 0::2] = camera[..., 0]
    mosaic[0::2, 1::2] = camera[..., 1]
    mosaic[1::2, 0::2] = camera[..., 1]
    mosaic[1::2, 1::2] = camera[..., 2]
    mosaic = np.clip(np.round(mosaic + BLACK_LEVEL + rng.normal(0, 3, mosaic.shape)), 0, WHITE_LEVEL)
    raw = RawImage(
        mosaic=mosaic.astype(np.uint16), cfa_pattern="RGGB", black_level=[BLACK_LEVEL] * 4,
        white_level=WHITE_LEVEL, as_shot_neutral=[1.0, 1.0, 1.0], color_matrix=np.eye(3),
        exposure_time=0.01, iso=100, make="isplab", model=SENSOR,
    )
    return write_dng(path, raw)


@pytest.fixture(scope="module")
def captures(tmp_path_factory, tuning) -> Path:
    """Three unlabelled captures; scene 0 is lit at :data:`T_PATCH`, the others at 3000 K and 6500 K."""
    folder = tmp_path_factory.mktemp("captures")
    for index, ct in enumerate((T_PATCH, 3000.0, 6500.0)):
        _scene(folder / f"alice,{SENSOR},{index}.dng", tuning, ct, seed=index)
    return folder


@pytest.fixture()
def folder(tmp_path, captures) -> Path:
    """A fresh copy of :func:`captures` for a test to label."""
    return Path(shutil.copytree(captures, tmp_path / "dngs"))


@pytest.fixture()
def server(folder, tuning_dir):
    server = serve(folder, "pisp", tuning_dir)
    yield server
    server.shutdown()
    server.server_close()


def _request(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict | bytes]:
    """One request with the server's token in its cookie (as the page sends it)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Cookie": f"isplab-annotate-{port}={server.token}"} | dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data


def _expected_gains(tuning, ct: float) -> np.ndarray:
    r, b = tuning.gains_at(ct)
    return np.array([1 / r, 1 / b])


# --- API -------------------------------------------------------------------------------------------


def test_listing_and_description(server, tuning):
    status, data = _request(server, "GET", "/api/images")
    assert status == 200
    assert [i["name"] for i in data["images"]] == [f"alice,{SENSOR},{i}.dng" for i in range(3)]
    assert not any(i["labelled"] for i in data["images"])
    status, info = _request(server, "GET", f"/api/image?name=alice,{SENSOR},0.dng")
    assert status == 200
    assert (info["width"], info["height"], info["sensor"]) == (640, 480, SENSOR)
    np.testing.assert_allclose(info["curve"], tuning.ct_curve)
    assert info["gains"] == [1.0, 1.0]  # unlabelled: the camera's as-shot gains


def test_rectangle_gains_and_preview(server, tuning):
    name = f"alice,{SENSOR},0.dng"
    status, data = _request(server, "POST", "/api/rectangle", {"name": name, "rectangle": [220, 180, 420, 300]})
    assert status == 200
    np.testing.assert_allclose(data["gains"], _expected_gains(tuning, T_PATCH), rtol=0.005)
    assert data["temperature"] == pytest.approx(T_PATCH, abs=30)

    status, data = _request(server, "GET", f"/api/render?name={name}&r={data['gains'][0]}&b={data['gains'][1]}")
    assert status == 200
    assert data["image"].startswith("data:image/png;base64,")
    png = cv2.imdecode(np.frombuffer(base64.b64decode(data["image"].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (240, 320, 3)  # half resolution (under the preview width)
    x1, y1, x2, y2 = (v // 2 for v in PATCH)
    patch = png[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].reshape(-1, 3).mean(axis=0)
    # White-balanced and through a CCM that keeps neutrals neutral: the grey patch renders grey.
    assert np.ptp(patch) < 4, patch
    # Wrong gains tint it: doubling red turns it red.
    status, data = _request(server, "GET", f"/api/render?name={name}&r=3&b=1")
    png = cv2.imdecode(np.frombuffer(base64.b64decode(data["image"].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    b, g, r = png[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].reshape(-1, 3).mean(axis=0)
    assert r > g + 20 and r > b + 20


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "match"),
    [
        ("GET", "/api/image?name=../etc/passwd.dng", None, 404, "not a DNG name"),
        ("GET", "/api/image?name=%2Fetc%2Fpasswd", None, 404, "not a DNG name"),
        ("GET", "/api/image?name=..", None, 404, "not a DNG name"),
        ("GET", "/api/image?name=nothere.dng", None, 404, "no DNG named"),
        ("GET", "/api/image?name=outside.dng", None, 404, "no DNG named"),  # symlink out of the folder
        ("GET", "/api/image", None, 400, "missing query parameter 'name'"),
        ("GET", f"/api/render?name=alice,{SENSOR},0.dng&r=-1&b=1", None, 400, "gains must lie between"),
        ("GET", f"/api/render?name=alice,{SENSOR},0.dng&r=nan&b=1", None, 400, "gains must lie between"),
        ("GET", f"/api/render?name=alice,{SENSOR},0.dng&r=x&b=1", None, 400, "gains must be two numbers"),
        ("GET", "/labels.json", None, 404, "no such page"),
        ("GET", "/static/../annotator.py", None, 404, "no such page"),
        ("POST", "/api/save", "{not json", 400, "malformed JSON"),
        ("POST", "/api/save", [1, 2], 400, "must be an object"),
        ("POST", "/api/save", {"name": f"alice,{SENSOR},0.dng", "gains": [1, 1], "method": "guess"}, 400,
         "unknown method"),
        ("POST", "/api/save", {"name": f"alice,{SENSOR},0.dng", "gains": [1], "method": "manual"}, 400,
         "gains must be two numbers"),
        ("POST", "/api/rectangle", {"name": f"alice,{SENSOR},0.dng", "rectangle": [0, 0, 9999, 10]}, 400,
         "inside the 640x480 image"),
        ("POST", "/api/rectangle", {"name": "../x.dng", "rectangle": [0, 0, 8, 8]}, 404, "not a DNG name"),
        ("POST", "/api/undo", {}, 409, "nothing to undo"),
        ("DELETE", "/api/save", None, 501, None),
    ],
)
def test_bad_requests_get_4xx_with_a_message(server, folder, tmp_path_factory, method, path, body, status, match):
    outside = tmp_path_factory.mktemp("outside") / "secret.dng"
    shutil.copy(folder / f"alice,{SENSOR},0.dng", outside)
    (folder / "outside.dng").symlink_to(outside)
    got, data = _request(server, method, path, body, headers={"Content-Type": "application/json"})
    assert got == status
    if match:
        assert match in data["error"]
    assert outside.exists() and len(list(folder.glob("*.dng"))) == 4  # nothing renamed


def test_post_requires_json_and_host_must_be_loopback(server):
    status, data = _request(server, "POST", "/api/undo", "{}", headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in data["error"]
    status, data = _request(server, "GET", "/api/images", headers={"Host": "evil.example:80"})
    assert status == 403 and "loopback" in data["error"]


def test_save_renames_records_and_undo_restores(server, folder, tuning):
    name = f"alice,{SENSOR},0.dng"
    status, record = _request(server, "POST", "/api/save", {
        "name": name, "gains": [1.23456, 2.5], "method": "rectangle", "rectangle": [221, 181, 421, 301],
    })
    assert status == 200
    new = f"alice,{SENSOR},0,1.2346,2.5000.dng"
    assert record["name"] == new and record["original"] == name
    assert not (folder / name).exists() and (folder / new).is_file()
    labels = json.loads((folder / LABELS_FILE).read_text())
    assert labels["records"] == [record]
    assert record["rectangle"] == [220, 180, 420, 300]  # rounded down to Bayer tiles
    assert record["temperature"] == pytest.approx(tuning.ct_from_rb(1 / 1.2346, 1 / 2.5), abs=0.1)
    assert {"time", "method", "gains"} <= record.keys()
    assert parse_annotated_name(folder / new).gains == (1.2346, 2.5)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left

    # A second save whose name is taken fails without touching either file.
    shutil.copy(folder / f"alice,{SENSOR},1.dng", folder / f"alice,{SENSOR},1,1.0000,1.0000.dng")
    status, data = _request(server, "POST", "/api/save", {
        "name": f"alice,{SENSOR},1.dng", "gains": [1, 1], "method": "manual"})
    assert status == 409 and "already exists" in data["error"]
    assert (folder / f"alice,{SENSOR},1.dng").exists()
    assert len(json.loads((folder / LABELS_FILE).read_text())["records"]) == 1

    status, undo = _request(server, "POST", "/api/undo", {})
    assert status == 200 and undo["name"] == name and undo["labelled"] == new
    assert (folder / name).is_file() and not (folder / new).exists()
    assert [r["action"] for r in json.loads((folder / LABELS_FILE).read_text())["records"]] == ["save", "undo"]
    status, data = _request(server, "POST", "/api/undo", {})
    assert status == 409


def test_save_refuses_to_replace_a_corrupt_labels_file(server, folder):
    """The labels file is the record of every original name: a save never overwrites one it cannot read."""
    (folder / LABELS_FILE).write_text('{"records": [{"action": "save", "original": "../x.dng"')
    name = f"alice,{SENSOR},0.dng"
    status, data = _request(server, "POST", "/api/save", {"name": name, "gains": [1.5, 2.0], "method": "manual"})
    assert status == 409
    assert data["error"].startswith(f"cannot read labels file {folder / LABELS_FILE}: Expecting")
    assert (folder / name).is_file() and len(list(folder.glob("*.dng"))) == 3
    assert (folder / LABELS_FILE).read_text() == '{"records": [{"action": "save", "original": "../x.dng"'


def test_annotated_folder_converts_end_to_end(folder, tuning_dir, tuning, tmp_path_factory):
    """Label each scene through the API's library (rectangle, slider gains, typed gains), then convert."""
    annotator = Annotator(folder, "pisp", tuning_dir)
    gains = annotator.rectangle_gains(f"alice,{SENSOR},0.dng", PATCH)
    annotator.save(f"alice,{SENSOR},0.dng", gains, "rectangle", PATCH)
    annotator.save(f"alice,{SENSOR},1.dng", _expected_gains(tuning, 3000.0), "temperature")
    annotator.save(f"alice,{SENSOR},2.dng", _expected_gains(tuning, 6500.0), "manual")
    assert all(entry["labelled"] for entry in annotator.listing())

    out = tmp_path_factory.mktemp("dataset")
    summary = convert_folder(folder, out, "pisp", tuning_dir=tuning_dir, workers=1, progress=False)
    assert summary.ok and len(summary.written) == 3
    temperatures = {p.name.split(",")[2]: int(p.name.split(",")[3]) for p in summary.written}
    assert temperatures["0"] == pytest.approx(T_PATCH, abs=30)
    assert temperatures["1"] == pytest.approx(3000, abs=5)
    assert temperatures["2"] == pytest.approx(6500, abs=5)


def test_labels_file_is_replaced_atomically(folder, tuning_dir, monkeypatch):
    annotator = Annotator(folder, "pisp", tuning_dir)
    annotator.save(f"alice,{SENSOR},0.dng", (2.0, 1.5), "manual")
    before = (folder / LABELS_FILE).read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(IsplabError, match="cannot write labels file .*disk full"):
        annotator.save(f"alice,{SENSOR},1.dng", (2.0, 1.5), "manual")
    # The old labels file is intact, the rename was rolled back, no temporary file is left.
    assert (folder / LABELS_FILE).read_bytes() == before
    assert (folder / f"alice,{SENSOR},1.dng").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_unparseable_names_are_listed_with_a_reason(folder, tuning_dir):
    (folder / f"alice,{SENSOR},0.dng").rename(folder / "holiday.dng")
    (folder / "notes.txt").write_text("not an image")
    annotator = Annotator(folder, "pisp", tuning_dir)
    entries = {e["name"]: e for e in annotator.listing()}
    assert set(entries) == {"holiday.dng", f"alice,{SENSOR},1.dng", f"alice,{SENSOR},2.dng"}
    assert "expected <user>,<sensor>,<id>.dng" in entries["holiday.dng"]["error"]
    with pytest.raises(IsplabError, match="cannot label 'holiday.dng'"):
        annotator.save("holiday.dng", (1.0, 1.0), "manual")


# --- the page in headless Chromium -----------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _without_browser(reason: str) -> None:
    """Skip a browser test, except in CI (``CI=true``), where the browser tests must run: fail."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {reason}: the browser tests must run in CI (.ci/run installs chromium)", pytrace=False)
    pytest.skip(reason)


def test_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but no chromium: the browser tests must run in CI"):
        _without_browser("no chromium")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        _without_browser("no chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        _without_browser("no chromium")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        _without_browser("playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        _without_browser(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _shown_gains(page) -> np.ndarray:
    return np.array([float(page.input_value("#red-gain")), float(page.input_value("#blue-gain"))])


def _wait_rendered(page) -> None:
    """Wait until the preview shows the gains in the number inputs."""
    page.wait_for_function(
        """() => {
            const shown = document.querySelector('#preview').dataset.gains;
            if (!shown) return false;
            const [r, b] = shown.split(',').map(Number);
            return Math.abs(r - Number(document.querySelector('#red-gain').value)) < 1e-3
                && Math.abs(b - Number(document.querySelector('#blue-gain').value)) < 1e-3;
        }""",
        timeout=15000,
    )


def test_page_labels_an_image(browser, server, folder, tuning):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Without the token the page is refused; the printed address (with it) sets the cookie and
    # drops the token from the address bar.
    base = server.url.split("?")[0]
    assert page.goto(base).status == 403
    assert "?token=" in server.url
    page.goto(server.url)
    assert page.url == base
    # Console errors include Content-Security-Policy violations (the page must work under the CSP).
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.wait_for_selector("#images li.current")
    assert page.inner_text("#title") == f"alice,{SENSOR},0.dng"
    assert page.inner_text("#progress") == "0 of 3 labelled"
    _wait_rendered(page)

    # 1. Drag a rectangle inside the grey patch.
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / 640
    x1, y1, x2, y2 = PATCH
    page.mouse.move(box["x"] + (x1 + 20) * scale, box["y"] + (y1 + 20) * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + (x1 + x2) / 2 * scale, box["y"] + (y1 + y2) / 2 * scale, steps=5)
    page.mouse.move(box["x"] + (x2 - 20) * scale, box["y"] + (y2 - 20) * scale, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#method').textContent === 'rectangle'")
    _wait_rendered(page)
    truth = _expected_gains(tuning, T_PATCH)
    np.testing.assert_allclose(_shown_gains(page), truth, rtol=0.01)
    assert float(page.inner_text("#ct")) == pytest.approx(T_PATCH, abs=40)
    # The sliders followed: the temperature slider sits at the patch's temperature, tint near 0.
    assert float(page.inner_text("#temperature-value").split()[0]) == pytest.approx(T_PATCH, rel=0.02)
    assert abs(float(page.inner_text("#tint-value"))) < 0.005
    page.screenshot(path="/tmp/isplab_annotate_rectangle.png")

    # 2. The temperature slider: click at 3/4 of its track -> gains on the CT curve at that temperature.
    slider = page.locator("#temperature").bounding_box()
    page.mouse.click(slider["x"] + 0.75 * slider["width"], slider["y"] + slider["height"] / 2)
    page.wait_for_function("() => document.querySelector('#method').textContent === 'temperature'")
    _wait_rendered(page)
    position = int(page.input_value("#temperature"))
    curve = tuning.ct_curve
    mired_lo, mired_hi = 1e6 / curve[-1, 0], 1e6 / curve[0, 0]
    ct = 1e6 / (mired_hi - position / 1000 * (mired_hi - mired_lo))
    assert 600 < position < 900
    np.testing.assert_allclose(_shown_gains(page), _expected_gains(tuning, ct), rtol=1e-3)
    assert float(page.inner_text("#ct")) == pytest.approx(ct, abs=15)
    #    ... and the purple/green slider moves off the curve along its normal: more red and blue
    #    in the light (purple) means lower red and blue gains.
    assert page.input_value("#tint") == "0"
    on_curve = _shown_gains(page)
    page.focus("#tint")
    for _ in range(30):  # 30 of the 100 steps to the purple end, which is 0.1 from the curve
        page.keyboard.press("ArrowRight")
    _wait_rendered(page)
    assert page.inner_text("#tint-value") == "0.030"
    off_curve = _shown_gains(page)
    assert np.all(off_curve < on_curve)
    r, b = 1 / off_curve
    assert tuning.ct_from_rb(r, b) == pytest.approx(ct, abs=15)  # perpendicular: same temperature

    # 3. Typed gains re-render the preview.
    before = page.get_attribute("#preview", "src")
    page.fill("#red-gain", "2.5")
    page.fill("#blue-gain", "1.1")
    page.wait_for_function("() => document.querySelector('#method').textContent === 'manual'")
    _wait_rendered(page)
    assert page.get_attribute("#preview", "src") != before
    assert page.inner_text("#gains") == "R 2.5000, B 1.1000"

    # Save with the keyboard: the file is renamed, the labels file holds it, the page moves on.
    page.locator("#title").click()  # focus away from the number input, where keys type
    page.keyboard.press("s")
    page.wait_for_function("() => document.querySelector('#progress').textContent === '1 of 3 labelled'")
    new = f"alice,{SENSOR},0,2.5000,1.1000.dng"
    assert (folder / new).is_file() and not (folder / f"alice,{SENSOR},0.dng").exists()
    record = json.loads((folder / LABELS_FILE).read_text())["records"][-1]
    assert (record["name"], record["original"], record["method"]) == (new, f"alice,{SENSOR},0.dng", "manual")
    assert page.inner_text("#title") == f"alice,{SENSOR},1.dng"

    # A reload shows it labelled, with its gains.
    page.reload()
    page.wait_for_selector("#images li.current")
    labelled = page.locator("#images li.labelled")
    assert labelled.count() == 1 and labelled.inner_text() == new
    labelled.click()
    page.wait_for_function(f"() => document.querySelector('#title').textContent === {json.dumps(new)}")
    _wait_rendered(page)
    np.testing.assert_allclose(_shown_gains(page), [2.5, 1.1])
    assert page.inner_text("#status") == "labelled"
    page.screenshot(path="/tmp/isplab_annotate_labelled.png")

    # Undo (u) renames it back.
    page.keyboard.press("u")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('renamed back')")
    assert page.inner_text("#progress") == "0 of 3 labelled"
    assert page.inner_text("#title") == f"alice,{SENSOR},0.dng"
    assert (folder / f"alice,{SENSOR},0.dng").is_file() and not (folder / new).exists()
    assert errors == []
    page.close()
