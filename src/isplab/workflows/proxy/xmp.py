"""darktable XMP sidecars: a history stack of modules with their params structs.

darktable stores each history item's parameters as ``darktable:params``: either the hex dump of
the module's packed little-endian C struct, or ``gz`` + two digits + base64(zlib(struct)), the
digits being ``min(len(struct) // len(zlib) + 1, 99)`` (darktable's ``dt_exif_xmp_encode``).
``darktable:modversion`` must be the version of that struct layout, or darktable ignores the item
(it says ``[dev_read_history] module ... version mismatch`` and still exits 0, which
:mod:`~isplab.workflows.proxy.darktable` turns into a failed render).

:func:`sidecar` writes the minimal sidecar darktable 4.2 accepts; :func:`read_history` reads one
back (either encoding).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from isplab.errors import IsplabError

__all__ = ["HistoryItem", "encode_params", "decode_params", "sidecar", "write_sidecar", "read_history"]

_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "darktable": "http://darktable.sf.net/",
}


@dataclass(frozen=True)
class HistoryItem:
    """One darktable history item: a module instance with its params struct."""

    operation: str
    modversion: int
    params: bytes
    enabled: bool = True
    multi_name: str = ""
    multi_priority: int = 0


def encode_params(data: bytes, compress: bool = False) -> str:
    """``darktable:params`` text for a packed struct: hex, or darktable's ``gzNN`` base64 form."""
    if not compress:
        return data.hex()
    packed = zlib.compress(data, 9)
    factor = min(len(data) // len(packed) + 1, 99)
    return f"gz{factor:02d}" + base64.b64encode(packed).decode("ascii")


def decode_params(text: str) -> bytes:
    """Inverse of :func:`encode_params` (either form).

    Raises:
        IsplabError: text that is neither valid hex nor a valid ``gzNN`` block.
    """
    try:
        if text.startswith("gz"):
            return zlib.decompress(base64.b64decode(text[4:], validate=True))
        return bytes.fromhex(text)
    except (ValueError, binascii.Error, zlib.error) as error:
        raise IsplabError(f"bad darktable:params {text[:24]!r}...: expected hex or gzNN+base64 ({error})") from None


def sidecar(items: list[HistoryItem], *, compress: bool = False) -> str:
    """The XMP text of a sidecar whose history is ``items`` (all applied: ``history_end`` = count).

    ``auto_presets_applied="1"`` stops darktable from adding its workflow defaults (exposure,
    filmic) on top of the history.
    """
    lines = []
    for num, item in enumerate(items):
        lines.append(
            f'     <rdf:li darktable:num="{num}" darktable:operation="{_attr(item.operation)}"'
            f' darktable:enabled="{int(bool(item.enabled))}" darktable:modversion="{int(item.modversion)}"'
            f' darktable:params="{encode_params(item.params, compress)}"'
            f' darktable:multi_name="{_attr(item.multi_name)}" darktable:multi_priority="{int(item.multi_priority)}"/>'
        )
    body = "\n".join(lines)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="isplab">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:darktable="http://darktable.sf.net/"
   darktable:xmp_version="4"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="{len(items)}">
   <darktable:history>
    <rdf:Seq>
{body}
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def write_sidecar(path: str | Path, items: list[HistoryItem], *, compress: bool = False) -> Path:
    """Write :func:`sidecar` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(sidecar(items, compress=compress))
    os.replace(tmp, path)
    return path


def read_history(path: str | Path) -> list[HistoryItem]:
    """The history items of a darktable sidecar, in order (up to ``history_end``).

    Raises:
        IsplabError: the file is missing or is not a darktable XMP.
    """
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        raise IsplabError(f"XMP file not found: {path}") from None
    except ElementTree.ParseError as error:
        raise IsplabError(f"cannot parse XMP {path}: {error} (expected a darktable sidecar)") from None
    description = root.find(".//rdf:Description", _NS)
    seq = root.find(".//darktable:history/rdf:Seq", _NS)
    if description is None or seq is None:
        raise IsplabError(f"{path} has no darktable:history: expected a darktable sidecar")
    dt = "{%s}" % _NS["darktable"]
    items = []
    for li in seq.findall("rdf:li", _NS):
        try:
            items.append(
                HistoryItem(
                    operation=li.attrib[dt + "operation"],
                    modversion=int(li.attrib[dt + "modversion"]),
                    params=decode_params(li.attrib[dt + "params"]),
                    enabled=li.attrib.get(dt + "enabled", "1") == "1",
                    multi_name=li.attrib.get(dt + "multi_name", ""),
                    multi_priority=int(li.attrib.get(dt + "multi_priority", "0")),
                )
            )
        except (KeyError, ValueError) as error:
            raise IsplabError(f"{path}: history item without a valid {error}: expected a darktable sidecar") from None
    end = description.attrib.get(dt + "history_end")
    return items[: int(end)] if end is not None and re.fullmatch(r"\d+", end) else items


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
