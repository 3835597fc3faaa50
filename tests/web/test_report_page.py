"""report.html opens from disk in a real headless Chromium with every figure loaded, and prints."""

from __future__ import annotations

import base64
import re

from analysis.report import FIGURE_CAPTIONS, REPORT_HTML, analyze
from experiment.synth import Kill, Spec, write_run
from tests.web.conftest import artifacts_dir, open_page, page_errors


def test_the_html_report_is_one_file_with_every_figure_loaded_and_it_prints(browser, tmp_path):
    run = tmp_path / "run"
    write_run(run, Spec(nodes=3, layers=6, tokens=10, profiles=("wifi", "lte"), kills=(Kill(node=2, token=3),)))
    analyze(run)
    alone = tmp_path / "mailed" / REPORT_HTML  # away from figures/: nothing may be fetched from beside it
    alone.parent.mkdir()
    alone.write_bytes((run / REPORT_HTML).read_bytes())

    open_page(browser, alone.as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
    assert len(images) == len(FIGURE_CAPTIONS)
    assert all(complete and width > 0 for complete, width, _ in images), images
    headings = browser.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert {"Summary", "Hops", "Faults", "Figures"} <= set(headings)
    fault_rows = browser.execute_script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Faults');"
        "return h.nextElementSibling.querySelectorAll('tbody tr').length")
    assert fault_rows == 1
    notes = browser.execute_script("return [...document.querySelectorAll('.note')].map(n => n.innerText).join(' ')")
    assert "`" not in notes and browser.execute_script("return document.querySelectorAll('.note code').length") > 0
    assert not page_errors(browser)

    pdf = base64.b64decode(browser.print_page())
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pdf.startswith(b"%PDF") and pages >= 2, "the report prints, over pages"
    (artifacts_dir() / "report.pdf").write_bytes(pdf)
