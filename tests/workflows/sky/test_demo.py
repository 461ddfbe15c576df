"""The ``sky`` demo section on its own (the lead wires it into ``isplab demo``)."""

from __future__ import annotations

import csv

import pytest

from isplab.engine.report import Report


@pytest.mark.slow
def test_sky_section_reports_held_out_numbers(tmp_path):
    from isplab.workflows.sky.demo import section

    report = Report("demo", tmp_path)
    section(tmp_path, report, seed=0, device="cpu", images=4, size=(128, 64), epochs=1)
    page = report.write()
    html = page.read_text()
    assert "Sky segmentation (isplab sky)" in html and "guided-filter refined" in html
    rows = list(csv.DictReader((tmp_path / "sky/test/per_image.csv").open()))
    assert len(rows) == 1 and 0 <= float(rows[0]["iou"]) <= 1
    assert f"{float(rows[0]['iou']):.4f}" in html  # one held-out image: its IoU is the table's
    assert (tmp_path / "sky/model/model.pt").is_file()
    assert f"sky/test/overlays/{rows[0]['image']}.png" in html and "sky/test/per_image.csv" in html
