"""The flywheel page (GET / in a browser) on a seeded data folder: its figures, escaping, links without the token,
the JSON answer other clients keep, and basic auth."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from backend import page
from backend.quality_labels import Label
from model.settings import Settings
from tests import page_seed
from tests.apps import App
from tests.page_seed import DAILY, EVIL, GATES, PREANNOTATION, PROJECT, QUALITIES, UNSCORED, days, seed

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"}
LS_URL, LS_KEY = "http://ls.example:8080", "secret-token-0123456789"


class Replacing:
    """A stand-in for a store of the backend, which closes the store it replaces when the backend closes it."""

    def __init__(self, replaced: object | None) -> None:
        self.replaced = replaced

    def close(self) -> None:
        if self.replaced is not None:
            self.replaced.close()  # type: ignore[attr-defined]


class FakeLabels(Replacing):
    """The per-project quality labels as the page reads them (backend.quality_labels)."""

    def projects(self) -> list[str]:
        return [PROJECT]

    def daily_counts(self, project: str) -> list[dict]:
        return [{"day": days()[-2], "source": f"x{EVIL}", "count": 2},
                {"day": days()[-1], "source": "interactive", "count": 4}] if project == PROJECT else []


class FakeScorers(Replacing):
    """Each project's quality scorer versions as the page reads them (backend.scorers), oldest first."""

    def projects(self) -> list[str]:
        return [PROJECT]

    def scorer_versions(self, project: str) -> list[dict]:
        gate = {"candidate": {"pearson": 0.731, "mae": 0.112}, "active": {"pearson": 0.5, "mae": 0.2},
                "held_out": 12, "reason": f"not worse {EVIL}"}
        return [{"version": "v0", "created_at": None, "labels": 0, "gate": {}, "active": False, "status": "shipped"},
                {"version": "v1", "created_at": 1_767_225_600.0, "labels": 40, "gate": gate, "active": True,
                 "status": "promoted"}] if project == PROJECT else []


def seeded(tmp_path, labels: bool = False, **settings) -> App:
    app = App(Settings(data_dir=tmp_path, label_studio_url=LS_URL, label_studio_api_key=LS_KEY, **settings))
    backend = app.backend
    seed(tmp_path, backend.annotations, backend.trajectories, backend.preannotator.queue, backend.registry,
         backend.quality_labels, backend.scorers.registry)
    backend.preannotator.queue.add(PROJECT, [20, 21], "segagent-v1")  # waiting (added here: nothing hands them out)
    if labels:  # stand-ins with markup in their texts
        backend.quality_labels = FakeLabels(backend.quality_labels)  # type: ignore[assignment]
        backend.scorers = FakeScorers(None)  # type: ignore[assignment]
    return app


class Texts(HTMLParser):
    """The page as a reader sees it: its text, and each element's attributes by tag."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parsed(html: str) -> Texts:
    texts = Texts()
    texts.feed(html)
    return texts


def test_a_browser_gets_the_page_with_the_seeded_figures(tmp_path):
    response = seeded(tmp_path).client.get("/", headers=BROWSER)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    texts = parsed(html)
    text = " ".join(texts.text)
    svgs = {attrs.get("data-figure") for tag, attrs in texts.tags if tag == "svg"}
    assert svgs == {"trajectories", "labels", "preannotation", "quality", "policy", "scorers"}
    section = f'data-project="{PROJECT}"'
    assert section in html
    total = sum(sum(counts) for counts in DAILY.values())
    assert f'<b data-value="trajectories">{total}</b>' in html
    assert f'<b data-value="annotations">{len(QUALITIES) + UNSCORED}</b>' in html
    for source, counts in DAILY.items():  # the legend's totals, and one bar's tooltip a day with data
        assert f"{source} <b>{sum(counts)}</b>" in html
        for day, count in zip(days(), counts, strict=True):
            assert (f"<title>{day}: {count} {source}</title>" in html) == bool(count)
    finished = sum(PREANNOTATION.values())
    assert f'<span class="big" data-value="finished">{finished} / {finished + 2}</span>' in html
    assert f'<b data-value="written">{PREANNOTATION["written"]}</b>' in html
    assert '<b data-value="remaining">2</b>' in html
    assert f'<b data-value="scored">{len(QUALITIES)}</b>' in html and f"{UNSCORED} not scored yet" in html
    assert '<b data-value="active-policy">v3</b>' in html
    for name, (status, candidate, _) in GATES.items():
        assert f'data-version="{name}"' in html and f"{candidate['episode_miou']:.3f}" in html
        assert f'<span class="badge {status}">{status}</span>' in html
    assert "vs 0.612" in text and "90.250" in text


def test_the_histogram_counts_every_scored_annotation_in_its_bin(tmp_path):
    html = seeded(tmp_path).client.get("/", headers=BROWSER).get_data(as_text=True)
    histogram = re.search(r'<svg[^>]*data-figure="quality".*?</svg>', html).group(0)
    counted = {f"{low / 10:.1f}": int(count) for count, low in
               ((c, int(float(lo) * 10)) for c, lo in re.findall(r"<title>(\d+) annotations scored ([\d.]+) to", histogram))}
    expected = {f"{b / 10:.1f}": sum(1 for q in QUALITIES if int(q * 10) == b) for b in range(10)}
    assert counted == expected


def test_the_worst_tasks_link_to_label_studio_without_its_token(tmp_path):
    html = seeded(tmp_path).client.get("/", headers=BROWSER).get_data(as_text=True)
    links = [attrs["href"] for tag, attrs in parsed(html).tags if tag == "a" and "data?task=" in attrs.get("href", "")]
    worst = sorted(range(len(QUALITIES)), key=lambda i: QUALITIES[i])[:page.WORST]
    assert links == [f"{LS_URL}/projects/{PROJECT}/data?task={10 + i}" for i in worst]
    assert LS_KEY not in html


def test_every_text_from_data_is_escaped(tmp_path):  # a label, a skip reason, a failure, a source, a gate reason
    html = seeded(tmp_path, labels=True).client.get("/", headers=BROWSER).get_data(as_text=True)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html  # a label, a reason, a source, a version
    assert html.count("&lt;script&gt;") >= 4


def test_quality_labels_and_scorer_versions(tmp_path):
    html = seeded(tmp_path).client.get("/", headers=BROWSER).get_data(as_text=True)
    labels = re.search(r'data-card="labels".*?</article>', html).group(0)
    for source, counts in page_seed.LABELS_DAILY.items():
        assert f"{source} <b>{sum(counts)}</b>" in labels
        for day, count in zip(days(), counts, strict=True):
            assert (f"<title>{day}: {count} {source}</title>" in labels) == bool(count)
    scorers = re.search(r'data-card="scorers".*?</article>', html).group(0)
    assert re.search(r'data-version="v1"><td><b>v1</b> <span class="badge active">', scorers)
    for name, (status, candidate, active) in page_seed.SCORERS.items():
        assert f'data-version="{name}"' in scorers and f'<span class="badge {status}">{status}</span>' in scorers
        assert f'{candidate["pearson"]:.3f} <span class="reason">vs {active["pearson"]:.3f}</span>' in scorers
        assert f'{candidate["mae"]:.3f} <span class="reason">vs {active["mae"]:.3f}</span>' in scorers
    assert 'data-version="v0"' in scorers and "shipped" in scorers and "not served" not in scorers


def test_a_project_without_quality_labels_says_so(tmp_path):
    app = seeded(tmp_path, labels=True)
    app.backend.quality_labels.daily_counts = lambda project: []  # type: ignore[method-assign]
    app.backend.scorers.scorer_versions = lambda project: FakeScorers(None).scorer_versions(project)[:1]  # type: ignore
    html = app.client.get("/", headers=BROWSER).get_data(as_text=True)
    labels = re.search(r'data-card="labels".*?</article>', html).group(0)
    scorers = re.search(r'data-card="scorers".*?</article>', html).group(0)
    assert "No labels yet" in labels and "<svg" not in labels
    assert 'data-version="v0"' in scorers and "<svg" not in scorers


def test_an_empty_data_folder_and_one_project(tmp_path):
    app = App(Settings(data_dir=tmp_path / "empty"))
    assert "Nothing yet" in app.client.get("/", headers=BROWSER).get_data(as_text=True)
    html = seeded(tmp_path / "one").client.get("/?project=3", headers=BROWSER).get_data(as_text=True)
    assert 'data-project="3"' in html
    assert app.client.get("/?project=x1", headers=BROWSER).status_code == 400


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.5"])
def test_json_clients_keep_what_they_got(tmp_path, accept):
    client = seeded(tmp_path).client
    headers = {"Accept": accept} if accept else {}
    response = client.get("/", headers=headers)
    assert response.mimetype == "application/json" and response.headers["Vary"] == "Accept"
    assert response.json == client.get("/health").json


def test_the_page_is_behind_basic_auth_like_the_json(tmp_path):
    client = seeded(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret").client
    for headers in (BROWSER, {}):
        refused = client.get("/", headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
        assert "data-figure" not in refused.get_data(as_text=True)
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert client.get("/", headers={**BROWSER, **good}).mimetype == "text/html"
    assert client.get("/", headers=good).json["status"] == "UP"
    assert client.get("/health").status_code == 200  # the health probe stays open


def test_the_day_window():
    from datetime import date
    rows = [{"day": "2026-01-03", "source": "human", "count": 1}]
    assert page.day_window(rows, date(2026, 1, 5)) == ["2026-01-03", "2026-01-04", "2026-01-05"]
    assert len(page.day_window(rows, date(2026, 6, 1))) == page.DAYS
    assert page.by_source(rows, ["2026-01-03", "2026-01-04"]) == {"human": [1, 0]}
    assert page.day_window([], date(2026, 1, 5)) == ["2026-01-05"]


def test_a_shared_policy_scope_is_said_so(tmp_path):
    html = seeded(tmp_path, policy_scope="shared").client.get("/", headers=BROWSER).get_data(as_text=True)
    policy = re.search(r'data-card="policy".*?</article>', html).group(0)
    assert "Policy versions (shared by every project)" in policy and "No version trained yet" in policy
    assert '<b data-value="active-policy">v0</b> (scope shared)' in html


def test_a_project_id_kept_before_ids_were_capped_does_not_break_the_page(tmp_path):
    """Project ids of 13-18 digits were accepted once; no registry scope names them. A folder holding one still
    serves the page, /status and /versions (that project without scorer versions)."""
    app = seeded(tmp_path)
    long_id, mask = str(10**12), np.ones((4, 4), bool)
    app.backend.annotations.replace(long_id, 1, 900, "v", [("Cat", None, "human", mask, None)])
    app.backend.quality_labels.replace_annotation(long_id, 1, 900, "v", [
        Label("prediction", "p", "Cat", "segagent-v1", 0.5, np.zeros(4))])
    html = app.client.get("/", headers=BROWSER).get_data(as_text=True)
    assert f'data-project="{long_id}"' in html and f'data-project="{PROJECT}"' in html
    assert app.client.get("/status").status_code == 200 and app.client.get("/versions").status_code == 200
