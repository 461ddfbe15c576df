"""The ``genisp`` demo section on its own (``isplab demo`` runs it as section ``genisp``)."""

from __future__ import annotations

import json

import pytest

from isplab.engine.report import Report


@pytest.mark.slow
def test_genisp_section_reports_ap_for_the_four_inputs(tmp_path):
    from isplab.workflows.genisp.demo import section

    report = Report("demo", tmp_path)
    section(tmp_path, report, seed=0, device="cpu", images=12, size=(96, 64), detector_epochs=1, genisp_epochs=1, batch_size=4)
    html = report.write().read_text()
    assert "GenISP (isplab genisp)" in html
    metrics = json.loads((tmp_path / "genisp/test/metrics.json").read_text())["inputs"]
    assert list(metrics) == ["raw", "classical", "genisp", "normal"]
    for source, title in (("raw", "(a) packed raw"), ("genisp", "(c) GenISP"), ("normal", "(d) normal light")):
        assert title in html and f"{100 * metrics[source]['AP']:.1f}" in html
    assert (tmp_path / "genisp/model/model.pt").is_file() and (tmp_path / "genisp/detector/detector.pt").is_file()
    assert "genisp/test/metrics.json" in html and "genisp_curves" in html
    assert list((tmp_path / "genisp/test/images").glob("genisp_*.png"))
