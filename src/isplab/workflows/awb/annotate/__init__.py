"""``isplab awb annotate``: label DNGs with their white-balance gains in a local web page.

:class:`Annotator` holds a folder's labelling state (listing, previews, grey rectangles, save and
undo with a labels file); :func:`serve` puts it behind a loopback web server whose page (shipped in
``static/``) offers the seed annotator's three ways to label: a grey rectangle, temperature and
purple/green sliders along the sensor's CT curve, or typed gains.
"""

from __future__ import annotations

from isplab.workflows.awb.annotate.annotator import LABELS_FILE, METHODS, Annotator
from isplab.workflows.awb.annotate.server import run, serve

__all__ = ["LABELS_FILE", "METHODS", "Annotator", "run", "serve"]
