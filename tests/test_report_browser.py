"""The report in a real browser: headless Chromium loads it offline, renders it, logs nothing, fetches nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from browser import find_chromium, visit
from clipcompare.report import build_report, write_html
from report_runs import make_evaluate_run, make_train_run

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium installed (Debian: apt-get install chromium)")


def test_chromium_renders_the_report_without_errors_or_requests(tmp_path):
    run, _ = make_evaluate_run(tmp_path, per_class=3)
    train = make_train_run(tmp_path)
    html = write_html(build_report([run, train]), tmp_path / "report.html")
    page = visit(html, width=1200, height=1400)
    assert page.requests == []
    assert page.errors == []
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot)).convert("L"), dtype=np.float64)
    assert shot.shape == (1400, 1200)
    assert shot.std() > 20  # text, tables and plots; a blank or failed page is one flat colour
    assert (shot < 100).mean() > 0.005  # some dark pixels: text rendered


def test_the_browser_check_catches_requests_and_errors(tmp_path):
    # the same check on a page that does fetch and throw: it must see both, or the test above proves nothing
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><p>x</p>'
                   '<img src="https://cdn.example.com/a.png"><script>throw new Error("boom")</script></body></html>')
    page = visit(bad, width=400, height=300)
    assert page.requests == ["https://cdn.example.com/a.png"]
    assert any("boom" in e for e in page.errors)
