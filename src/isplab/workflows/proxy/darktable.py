"""The darktable backend: find darktable-cli, check its version and struct layouts, render.

A render is one ``darktable-cli IN.dng IN.xmp OUT.tif`` call with everything but the block fixed:

* the base pipeline (:func:`base_history`): raw prepare, white balance at the image's as-shot
  multipliers written explicitly (``temperature``), highlight reconstruction **off** (clipping
  is not linear), demosaic and input colour profile at darktable's defaults, no exposure or
  filmic (``auto_presets_applied="1"`` and ``plugins/darkroom/workflow=none``);
* the block's history item, enabled with the sample's parameters, or disabled for the "off"
  render that gives the proxy's input. For ``temperature`` the base white balance is left out,
  so its input is the un-white-balanced image;
* the output: a float32, uncompressed, unclipped TIFF in linear Rec.709 (``--icc-type
  LIN_REC709``, ``bpp=32``, ``compress=0``), at most ``--width x --height``.

darktable exits 0 even when it ignores a history item (wrong ``modversion`` or struct size, an
unknown module); :func:`render` reads its output for those messages and raises
:class:`RenderError` with darktable's own words.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isplab.errors import IsplabError
from isplab.workflows.proxy.blocks import BLOCKS, SUPPORTED_DARKTABLE, Block
from isplab.workflows.proxy.xmp import HistoryItem, write_sidecar

__all__ = [
    "DarktableInfo",
    "RenderError",
    "find_darktable",
    "introspect",
    "check_layouts",
    "base_history",
    "block_history",
    "chain_history",
    "write_chain_xmp",
    "render",
]

#: Modules of the fixed base pipeline that isplab writes (version, struct bytes in darktable 4.2).
_HIGHLIGHTS = ("highlights", 4, 48)
_TEMPERATURE = BLOCKS["temperature"]
_VERSION = re.compile(r"darktable-cli\s+(\d+)\.(\d+)\.(\d+)")
# darktable's prefix when it ignores (part of) the history: a wrong modversion or struct size
# ("version mismatch"), or an unknown module ("is not installed"). It still exits 0.
_HISTORY_ERROR = "[dev_read_history]"


class RenderError(IsplabError):
    """darktable-cli did not produce the render asked for; the message is darktable's."""


@dataclass(frozen=True)
class DarktableInfo:
    """An installed darktable-cli that isplab can drive."""

    cli: str
    version: str  # e.g. "4.2.1"
    plugin_dir: str | None  # where the module plugins live (for introspection), if found

    @property
    def series(self) -> str:
        return ".".join(self.version.split(".")[:2])


def find_darktable(cli: str | None = None) -> DarktableInfo:
    """Locate ``darktable-cli`` (``cli``, else ``$PATH``) and check its version is supported.

    Raises:
        IsplabError: not found, not runnable, or a release whose struct layouts isplab does not
            know (anything but :data:`~isplab.workflows.proxy.blocks.SUPPORTED_DARKTABLE`).
    """
    name = cli or "darktable-cli"
    path = shutil.which(name)
    if path is None:
        where = f"{name} does not exist or is not executable" if cli else "darktable-cli not found on PATH"
        raise IsplabError(
            f"{where}: install darktable {SUPPORTED_DARKTABLE[-1]} (Debian/Ubuntu: apt-get install darktable), "
            "pass --darktable-cli PATH, or use --backend builtin"
        )
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise IsplabError(f"cannot run {path} --version: {error}") from None
    match = _VERSION.search(result.stdout + result.stderr)
    if match is None:
        first = (result.stdout + result.stderr).strip().splitlines()[:1]
        raise IsplabError(
            f"{path} --version printed {first[0] if first else 'nothing'!r}: expected 'darktable-cli X.Y.Z'"
        )
    version = ".".join(match.groups())
    series = ".".join(match.groups()[:2])
    if series not in SUPPORTED_DARKTABLE:
        raise IsplabError(
            f"darktable {version} ({path}) is not supported: isplab knows the module struct layouts of "
            f"darktable {', '.join(s + '.x' for s in SUPPORTED_DARKTABLE)} only"
        )
    return DarktableInfo(cli=path, version=version, plugin_dir=_plugin_dir(path))


def _plugin_dir(cli: str) -> str | None:
    prefix = Path(os.path.realpath(cli)).parent.parent
    for candidate in ("lib/x86_64-linux-gnu/darktable", "lib/aarch64-linux-gnu/darktable", "lib64/darktable", "lib/darktable"):
        folder = prefix / candidate
        if (folder / "libdarktable.so").is_file() and (folder / "plugins").is_dir():
            return str(folder)
    return None


# Run in a child process: loads libdarktable and the module plugins (no darktable start-up) and
# prints each module's introspection: params version, struct size and fields.
_INTROSPECT = r"""
import ctypes, json, os, sys
base, modules = sys.argv[1], sys.argv[2:]
ctypes.CDLL(os.path.join(base, "libdarktable.so"), mode=ctypes.RTLD_GLOBAL)
class H(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("type_name", ctypes.c_char_p), ("name", ctypes.c_char_p),
                ("field_name", ctypes.c_char_p), ("description", ctypes.c_char_p),
                ("size", ctypes.c_size_t), ("offset", ctypes.c_size_t), ("so", ctypes.c_void_p)]
def limits(kind):
    class F(ctypes.Structure):
        _fields_ = [("header", H), ("Min", kind), ("Max", kind), ("Default", kind)]
    return F
class S(ctypes.Structure):
    _fields_ = [("header", H), ("entries", ctypes.c_size_t), ("fields", ctypes.POINTER(ctypes.c_void_p))]
class E(ctypes.Structure):
    _fields_ = [("header", H), ("entries", ctypes.c_size_t), ("values", ctypes.c_void_p), ("Default", ctypes.c_int)]
class B(ctypes.Structure):
    _fields_ = [("header", H), ("Default", ctypes.c_int)]
class I(ctypes.Structure):
    _fields_ = [("api_version", ctypes.c_int), ("params_version", ctypes.c_int), ("type_name", ctypes.c_char_p),
                ("size", ctypes.c_size_t), ("field", ctypes.c_void_p)]
KINDS = {2: ("float", limits(ctypes.c_float)), 10: ("int", limits(ctypes.c_int)), 16: ("enum", E), 14: ("bool", B)}
out = {}
for m in modules:
    lib = ctypes.CDLL(os.path.join(base, "plugins", "lib%s.so" % m), mode=os.RTLD_LAZY)
    lib.get_introspection.restype = ctypes.c_void_p
    if lib.introspection_init(None, 8) != 0:
        out[m] = {"error": "introspection api mismatch"}
        continue
    intro = I.from_address(lib.get_introspection())
    top = S.from_address(intro.field)
    fields = []
    for k in range(top.entries):
        addr = top.fields[k]
        h = H.from_address(addr)
        kind, cls = KINDS.get(h.type, ("other", None))
        entry = {"name": h.field_name.decode(), "type": kind, "offset": h.offset, "size": h.size}
        if cls is not None:
            f = cls.from_address(addr)
            if hasattr(f, "Min"):
                entry.update(min=f.Min, max=f.Max)
            entry["default"] = f.Default
        fields.append(entry)
    out[m] = {"version": lib.dt_module_mod_version(), "size": intro.size, "fields": fields}
print(json.dumps(out))
"""


def introspect(info: DarktableInfo, operations: list[str]) -> dict | None:
    """darktable's own description of the params structs of ``operations``, read from the
    installed plugins' introspection data: ``{op: {version, size, fields: [{name, type, offset,
    size, min, max, default}]}}``. ``None`` when the plugins cannot be found or loaded (the
    version check of :func:`find_darktable` then stands alone)."""
    if info.plugin_dir is None:
        return None
    try:
        result = subprocess.run(
            [sys.executable, "-c", _INTROSPECT, info.plugin_dir, *operations],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def check_layouts(info: DarktableInfo, blocks: list[Block]) -> bool:
    """Refuse blocks whose struct layout differs from the installed darktable's.

    Compares each block's ``modversion``, struct size and the name, type and offset of every
    field with :func:`introspect`. Returns whether the check could be made.

    Raises:
        IsplabError: a mismatch, naming the module, both versions and both sizes.
    """
    found = introspect(info, [b.operation for b in blocks] + [_HIGHLIGHTS[0]])
    if found is None:
        return False
    highlights = found.get(_HIGHLIGHTS[0], {})
    if (highlights.get("version"), highlights.get("size")) != _HIGHLIGHTS[1:]:
        raise IsplabError(
            f"darktable {info.version} ({info.cli}) has highlights params version {highlights.get('version')} of "
            f"{highlights.get('size')} bytes; isplab writes version {_HIGHLIGHTS[1]} of {_HIGHLIGHTS[2]} bytes: unsupported struct layout"
        )
    for block in blocks:
        actual = found.get(block.operation, {})
        where = f"darktable {info.version} ({info.cli})"
        if "error" in actual or actual.get("version") != block.modversion or actual.get("size") != block.struct_bytes:
            raise IsplabError(
                f"{where} has {block.operation} params version {actual.get('version')} of {actual.get('size')} bytes; "
                f"isplab writes version {block.modversion} of {block.struct_bytes} bytes: unsupported struct layout"
            )
        expected = [(f.name, "other" if f.count > 1 else f.ctype, block.offset(f.name)) for f in block.fields]  # arrays: "other"
        got = [(f["name"], f["type"], f["offset"]) for f in actual["fields"]]
        if expected != got:
            first = next(((e, g) for e, g in zip(expected, got) if e != g), (expected[len(got):][:1], got[len(expected):][:1]))
            raise IsplabError(
                f"{where}: {block.operation} params field layout differs from isplab's table "
                f"(isplab {first[0]}, darktable {first[1]}): unsupported struct layout"
            )
    return True


def base_history(block: Block, wb_gains: np.ndarray) -> list[HistoryItem]:
    """The fixed pipeline around ``block``: as-shot white balance (except for the
    ``temperature`` block itself) and highlight reconstruction disabled."""
    items = [HistoryItem(_HIGHLIGHTS[0], _HIGHLIGHTS[1], bytes(_HIGHLIGHTS[2]), enabled=False)]
    if block.name != "temperature":
        red, green, blue = (float(g) for g in wb_gains)
        params = _TEMPERATURE.pack({"red": min(red, 8.0), "green": min(green, 8.0), "blue": min(blue, 8.0)})
        items.insert(0, HistoryItem(_TEMPERATURE.operation, _TEMPERATURE.modversion, params))
    return items


def block_history(block: Block, values: dict[str, float] | None) -> HistoryItem:
    """The block's history item: enabled with ``values``, or disabled (defaults) when ``None``."""
    params = block.pack(values or {})
    return HistoryItem(block.operation, block.modversion, params, enabled=values is not None)


@dataclass
class RenderJob:
    """One darktable-cli call."""

    dng: Path
    xmp: Path
    output: Path  # .tif
    size: tuple[int, int] | None = None  # (max width, max height)


def render(info: DarktableInfo, job: RenderJob, configdir: Path, *, threads: int | None = None, timeout: float = 600) -> float:
    """Run darktable-cli for ``job``; the TIFF appears at ``job.output`` only when complete.

    Returns:
        The wall time of the call, in seconds.

    Raises:
        RenderError: darktable failed, printed that it ignored part of the history, or wrote no
            file; the message quotes darktable.
    """
    out = Path(job.output)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    tmp.unlink(missing_ok=True)
    cmd = [info.cli, str(job.dng), str(job.xmp), str(tmp), "--icc-type", "LIN_REC709", "--apply-custom-presets", "false"]
    if job.size is not None:
        cmd += ["--width", str(job.size[0]), "--height", str(job.size[1])]
    cmd += [
        "--core",
        "--configdir", str(configdir),
        "--cachedir", str(Path(configdir) / "cache"),
        "--library", ":memory:",
        "--disable-opencl",
        "--conf", "plugins/imageio/format/tiff/bpp=32",
        "--conf", "plugins/imageio/format/tiff/compress=0",
        "--conf", "plugins/darkroom/workflow=none",
    ]  # fmt: skip
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(max(1, threads))
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise RenderError(f"darktable-cli took longer than {timeout:g} s on {job.dng.name}") from None
    except OSError as error:
        raise RenderError(f"cannot run {info.cli}: {error}") from None
    seconds = time.perf_counter() - start
    messages = _messages(result.stdout + "\n" + result.stderr)
    problems = [m for m in messages if m.startswith(_HISTORY_ERROR)]
    if result.returncode != 0 or problems or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        said = "; ".join(problems or messages[-4:]) or "no message"
        raise RenderError(f"darktable-cli exit {result.returncode} on {job.dng.name} with {job.xmp.name}: {said}")
    os.replace(tmp, out)
    return seconds


def _messages(text: str) -> list[str]:
    """darktable's output lines worth quoting (not its root warning or the export notice)."""
    keep = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("WARNING: either your user id") or line.startswith("[export_job] exported"):
            continue
        keep.append(line)
    return keep


def chain_history(steps: list[tuple[Block, dict[str, float] | None]], wb_gains: np.ndarray) -> list[HistoryItem]:
    """The history of a render with several blocks: the base pipeline (as-shot white balance
    unless ``temperature`` is one of the blocks; highlight reconstruction off) and one item per
    ``(block, values)`` step (``values=None``: disabled). darktable applies them in its own
    pipeline order, not in the order listed."""
    names = [block.name for block, _ in steps]
    if len(set(names)) != len(names):
        raise IsplabError(f"blocks {', '.join(names)}: each block may appear once in a render")
    base = base_history(_TEMPERATURE if "temperature" in names else steps[0][0], wb_gains)
    return [*base, *(block_history(block, values) for block, values in steps)]


def write_job_xmp(path: Path, block: Block, values: dict[str, float] | None, wb_gains: np.ndarray) -> Path:
    """The sidecar of one render: base pipeline plus the block (``values=None``: disabled)."""
    return write_sidecar(path, chain_history([(block, values)], wb_gains))


def write_chain_xmp(path: Path, steps: list[tuple[Block, dict[str, float] | None]], wb_gains: np.ndarray) -> Path:
    """The sidecar of one render of several blocks (:func:`chain_history`)."""
    return write_sidecar(path, chain_history(steps, wb_gains))
