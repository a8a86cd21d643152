"""The flywheel page in a real browser: `make serve` on a seeded data folder, behind basic auth, opened by Debian's
Chromium through Playwright. The plots are there and visible, the numbers a person reads match the seeded ones,
the worst tasks link to Label Studio, the page fetches nothing beyond itself; a screenshot is kept in the test's
tmp dir (page.png).

Skipped only when Chromium or Playwright is missing, like tests/e2e/test_browser.py."""
from __future__ import annotations

import re
import shutil

import pytest
import requests

from tests.e2e.conftest import make_serve
from tests.page_seed import DAILY, GATES, LABELS_DAILY, PREANNOTATION, PROJECT, QUALITIES, SCORERS, UNSCORED, seed_folder

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
LS_URL, LS_KEY = "http://127.0.0.1:9", "e2e-page-token-0123456789"  # nothing listens: the page only links there
USER, PASSWORD = "reviewer", "page-s3cret"


def test_the_page_shows_the_seeded_flywheel(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    seed_folder(data)
    with make_serve(data, LABEL_STUDIO_URL=LS_URL, LABEL_STUDIO_API_KEY=LS_KEY, BASIC_AUTH_USER=USER,
                    BASIC_AUTH_PASS=PASSWORD) as server:
        assert requests.get(server["url"], headers={"Accept": "text/html"}, timeout=10).status_code == 401
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 900},
                                              http_credentials={"username": USER, "password": PASSWORD})
                requested: list[str] = []
                context.on("request", lambda request: requested.append(request.url))
                page = context.new_page()
                answer = page.goto(server["url"])
                assert answer is not None and answer.status == 200
                page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
                _check_figures(page)
            finally:
                browser.close()
        assert requested == [f"{server['url']}/"]  # no script, style, font or image from anywhere
    assert (tmp_path / "page.png").stat().st_size > 10_000


def _check_figures(page) -> None:
    section = page.locator(f'section[data-project="{PROJECT}"]')
    for figure in ("trajectories", "labels", "preannotation", "quality", "policy", "scorers"):
        plot = section.locator(f'svg[data-figure="{figure}"]')
        assert plot.is_visible(), figure
        box = plot.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 20, (figure, box)
    bars = section.locator('svg[data-figure="trajectories"] rect.bar')
    assert bars.count() == sum(1 for counts in DAILY.values() for count in counts if count)
    assert bars.first.is_visible()

    def value(name: str) -> str:
        return section.locator(f'[data-value="{name}"]').inner_text().strip()

    assert value("trajectories") == str(sum(sum(counts) for counts in DAILY.values()))
    assert value("annotations") == str(len(QUALITIES) + UNSCORED)
    finished = sum(PREANNOTATION.values())
    assert value("finished") == f"{finished} / {finished}"
    assert value("written") == str(PREANNOTATION["written"])
    assert value("scored") == str(len(QUALITIES))
    assert value("active-policy") == "v3"
    for card, daily in (("trajectories", DAILY), ("labels", LABELS_DAILY)):
        for source, counts in daily.items():
            legend = section.locator(f'[data-card="{card}"] li[data-source="{source}"] b')
            assert legend.inner_text() == str(sum(counts)), (card, source)
    histogram = section.locator('svg[data-figure="quality"] text.count').all_text_contents()
    assert sum(int(count) for count in histogram) == len(QUALITIES)
    for name, (status, candidate, _) in GATES.items():
        row = section.locator(f'[data-card="policy"] tr[data-version="{name}"]')
        assert row.is_visible()
        assert status in row.inner_text() and f"{candidate['episode_miou']:.3f}" in row.inner_text()
    assert "active" in section.locator('[data-card="policy"] tr[data-version="v3"]').inner_text()
    for name, (status, candidate, _) in SCORERS.items():
        row = section.locator(f'[data-card="scorers"] tr[data-version="{name}"]').inner_text()
        assert status in row and f"{candidate['pearson']:.3f}" in row and f"{candidate['mae']:.3f}" in row
    assert "active" in section.locator('[data-card="scorers"] tr[data-version="v1"]').inner_text()
    worst = section.locator('[data-card="worst"] a')
    assert worst.first.inner_text() == f"task {10 + QUALITIES.index(min(QUALITIES))}"
    assert re.fullmatch(rf"{re.escape(LS_URL)}/projects/{PROJECT}/data\?task=10", worst.first.get_attribute("href"))
    assert LS_KEY not in page.content()
