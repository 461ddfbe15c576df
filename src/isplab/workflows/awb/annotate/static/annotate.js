// isplab awb annotate: the page. The server renders previews and does the colour science; this
// script moves along the sensor's CT curve (the tuning's `T, r, b` rows, r = R/G and b = B/G of
// grey, gains = 1/r, 1/b) for the sliders and sends everything else to the JSON API.
"use strict";

const TINT_RANGE = 0.1;     // purple/green slider end = this distance from the curve in (r, b)
const TANGENT_STEP = 10;    // kelvin either side for the curve's direction, as isplab's Tuning
const RENDER_DELAY = 80;    // ms of quiet before re-rendering while a control moves

const $ = (id) => document.getElementById(id);
const state = { images: [], index: 0, info: null, gains: null, method: "manual", rectangle: null, renderSeq: 0 };
let renderTimer = null;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// --- the CT curve ------------------------------------------------------------------------------

function interp(x, xs, ys) {
  if (x <= xs[0]) return ys[0];
  if (x >= xs[xs.length - 1]) return ys[ys.length - 1];
  let i = 1;
  while (xs[i] < x) i++;
  const t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]);
  return ys[i - 1] + t * (ys[i] - ys[i - 1]);
}

function curveAt(ct) {
  const c = state.info.curve;
  const ts = c.map((row) => row[0]);
  return [interp(ct, ts, c.map((row) => row[1])), interp(ct, ts, c.map((row) => row[2]))];
}

// Unit normal to the curve, pointing to larger r and b: light with more red and blue than the
// curve's (purple); the negative side is greener.
function normalAt(ct) {
  const [r0, b0] = curveAt(ct - TANGENT_STEP);
  const [r1, b1] = curveAt(ct + TANGENT_STEP);
  const n = [b1 - b0, r0 - r1];
  const length = Math.hypot(n[0], n[1]);
  return length === 0 ? [Math.SQRT1_2, Math.SQRT1_2] : [n[0] / length, n[1] / length];
}

function miredRange() {
  const c = state.info.curve;
  return [1e6 / c[c.length - 1][0], 1e6 / c[0][0]];  // [coolest, warmest]
}

// Slider position 0..1000 runs warm (left) to cool in equal mired steps.
function sliderTemperature() {
  const [lo, hi] = miredRange();
  return 1e6 / (hi - ($("temperature").value / 1000) * (hi - lo));
}

function setSlidersFrom(temperature, gains) {
  const [lo, hi] = miredRange();
  const mired = Math.min(hi, Math.max(lo, 1e6 / temperature));
  $("temperature").value = Math.round(((hi - mired) / (hi - lo)) * 1000);
  const [r, b] = curveAt(temperature);
  const n = normalAt(temperature);
  const offset = (1 / gains[0] - r) * n[0] + (1 / gains[1] - b) * n[1];
  $("tint").value = Math.round(Math.max(-1, Math.min(1, offset / TINT_RANGE)) * 100);
  showSliderValues();
}

function showSliderValues() {
  $("temperature-value").textContent = `${Math.round(sliderTemperature())} K`;
  $("tint-value").textContent = (($("tint").value / 100) * TINT_RANGE).toFixed(3);
}

function gainsFromSliders() {
  const ct = sliderTemperature();
  const [r, b] = curveAt(ct);
  const n = normalAt(ct);
  const d = ($("tint").value / 100) * TINT_RANGE;
  return [1 / (r + d * n[0]), 1 / (b + d * n[1])];
}

// --- gains and preview -------------------------------------------------------------------------

function setGains(gains, method, { rectangle = null, fromInputs = false, fromSliders = false } = {}) {
  state.gains = gains;
  state.method = method;
  state.rectangle = rectangle;
  if (!fromInputs) {
    $("red-gain").value = gains[0].toFixed(4);
    $("blue-gain").value = gains[1].toFixed(4);
  }
  $("gains").textContent = `R ${gains[0].toFixed(4)}, B ${gains[1].toFixed(4)}`;
  $("method").textContent = method;
  if (!rectangle) clearOverlay();
  clearTimeout(renderTimer);
  renderTimer = setTimeout(() => render(!fromSliders), RENDER_DELAY);
}

async function render(syncSliders) {
  const seq = ++state.renderSeq;
  const [r, b] = state.gains;
  const name = state.info.name;
  const query = new URLSearchParams({ name, r, b });
  try {
    const data = await api(`/api/render?${query}`);
    if (seq !== state.renderSeq) return;  // a newer render is on its way
    $("preview").src = data.image;
    $("ct").textContent = Math.round(data.temperature);
    if (syncSliders) setSlidersFrom(data.temperature, [r, b]);
    $("preview").dataset.gains = `${r},${b}`;  // what is shown: lets tests wait for it
  } catch (error) {
    status(error.message, true);
  }
}

// --- images ------------------------------------------------------------------------------------

async function loadList(select) {
  const data = await api("/api/images");
  state.images = data.images;
  $("folder").textContent = `${data.folder} (${data.target})`;
  const done = data.images.filter((image) => image.labelled).length;
  $("progress").textContent = `${done} of ${data.images.length} labelled`;
  const list = $("images");
  list.replaceChildren();
  data.images.forEach((image, i) => {
    const item = document.createElement("li");
    item.textContent = image.name;
    item.className = image.error ? "broken" : image.labelled ? "labelled" : "unlabelled";
    if (image.error) item.title = image.error;
    item.addEventListener("click", () => openImage(i));
    list.append(item);
  });
  if (!data.images.length) {
    $("title").textContent = "no DNGs in this folder";
    return;
  }
  const found = state.images.findIndex((image) => image.name === select);
  await openImage(found >= 0 ? found : Math.min(state.index, state.images.length - 1));
}

async function openImage(index) {
  if (index < 0 || index >= state.images.length) return;
  state.index = index;
  [...$("images").children].forEach((item, i) => item.classList.toggle("current", i === index));
  const name = state.images[index].name;
  $("title").textContent = name;
  try {
    state.info = await api(`/api/image?${new URLSearchParams({ name })}`);
  } catch (error) {
    state.info = null;
    status(error.message, true);
    return;
  }
  status(state.info.labelled ? "labelled" : "not labelled yet");
  setGains(state.info.gains, "manual");
}

async function save() {
  if (!state.info) return;
  try {
    const record = await api("/api/save", {
      name: state.info.name, gains: state.gains, method: state.method, rectangle: state.rectangle,
    });
    const next = state.index + 1 < state.images.length ? state.images[state.index + 1].name : record.name;
    await loadList(next);
    status(`saved ${record.original} as ${record.name} (${Math.round(record.temperature)} K)`);
  } catch (error) {
    status(error.message, true);
  }
}

async function undo() {
  try {
    const record = await api("/api/undo", {});
    await loadList(record.name);
    status(`undone: ${record.labelled} renamed back to ${record.name}`);
  } catch (error) {
    status(error.message, true);
  }
}

// --- rectangle on the preview -----------------------------------------------------------------

const overlay = $("overlay");
let dragStart = null;

function fitOverlay() {
  const { clientWidth: width, clientHeight: height } = $("preview");
  if (overlay.width !== width || overlay.height !== height) {  // resizing clears the canvas
    overlay.width = width;
    overlay.height = height;
  }
}

function clearOverlay() {
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
}

function drawBox(a, b) {
  clearOverlay();
  const ctx = overlay.getContext("2d");
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#ff0";
  ctx.strokeRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
}

const point = (event) => [event.offsetX, event.offsetY];

overlay.addEventListener("mousedown", (event) => { dragStart = point(event); });
overlay.addEventListener("mousemove", (event) => { if (dragStart) drawBox(dragStart, point(event)); });
overlay.addEventListener("mouseup", async (event) => {
  if (!dragStart || !state.info) return;
  const a = dragStart;
  const b = point(event);
  dragStart = null;
  if (Math.abs(b[0] - a[0]) < 3 || Math.abs(b[1] - a[1]) < 3) { clearOverlay(); return; }
  // Display pixels -> raw pixels.
  const sx = state.info.width / overlay.width;
  const sy = state.info.height / overlay.height;
  const rectangle = [
    Math.round(Math.min(a[0], b[0]) * sx), Math.round(Math.min(a[1], b[1]) * sy),
    Math.round(Math.max(a[0], b[0]) * sx), Math.round(Math.max(a[1], b[1]) * sy),
  ];
  try {
    const data = await api("/api/rectangle", { name: state.info.name, rectangle });
    setGains(data.gains, "rectangle", { rectangle });
    drawBox(a, b);
  } catch (error) {
    clearOverlay();
    status(error.message, true);
  }
});

// --- controls ----------------------------------------------------------------------------------

for (const id of ["temperature", "tint"]) {
  $(id).addEventListener("input", () => {
    if (!state.info) return;
    showSliderValues();
    setGains(gainsFromSliders(), "temperature", { fromSliders: true });
  });
}
for (const id of ["red-gain", "blue-gain"]) {
  $(id).addEventListener("input", () => {
    const gains = [parseFloat($("red-gain").value), parseFloat($("blue-gain").value)];
    if (state.info && gains.every((g) => Number.isFinite(g) && g >= 0.05 && g <= 20)) {
      setGains(gains, "manual", { fromInputs: true });
    }
  });
}
$("save").addEventListener("click", save);
$("undo").addEventListener("click", undo);
$("next").addEventListener("click", () => openImage(state.index + 1));
$("prev").addEventListener("click", () => openImage(state.index - 1));
$("preview").addEventListener("load", fitOverlay);
window.addEventListener("resize", fitOverlay);
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.altKey || event.metaKey || event.target.type === "number") return;
  const action = { s: save, n: () => openImage(state.index + 1), p: () => openImage(state.index - 1), u: undo }[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

loadList().catch((error) => status(error.message, true));
