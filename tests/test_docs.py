"""The documentation: the configuration page is what the settings model renders, its defaults read back as the
defaults, the README stays short and links every page of docs/, and no relative link points nowhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from model.cli import main
from model.settings import Settings
from model.settings_docs import COMMAND, PAGE, SERVE_VARIABLES, default_text, render

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def test_the_configuration_page_is_what_the_settings_render():
    committed = (ROOT / PAGE).read_text()
    assert committed == render(), f"{PAGE} is stale: run `{COMMAND}` and commit it"


def test_the_command_writes_the_page(tmp_path, capsys):
    out = tmp_path / "docs" / "configuration.md"
    assert main(["settings-doc", "--out", str(out)]) == 0
    assert out.read_text() == render()
    assert main(["settings-doc"]) == 0
    assert capsys.readouterr().out.endswith(render())


def test_every_setting_has_a_description_and_a_row():
    page = render()
    for name, field in Settings.model_fields.items():
        assert field.alias and field.description, f"{name} needs an alias and a description"
        assert f"| `{field.alias}` | {default_text(field)} |" in page


def test_each_default_as_written_reads_back_as_the_default(monkeypatch):
    for field in Settings.model_fields.values():
        monkeypatch.delenv(field.alias, raising=False)
    defaults = Settings()
    for name, field in Settings.model_fields.items():
        written = default_text(field)
        if written == "empty":
            assert not getattr(defaults, name), f"{field.alias} is not empty by default"
        elif written.startswith("`"):
            monkeypatch.setenv(field.alias, written.strip("`"))
            assert getattr(Settings(), name) == getattr(defaults, name), f"{field.alias}: the page says {written}"
            monkeypatch.delenv(field.alias)


def test_the_make_serve_defaults_are_the_makefiles_and_the_backends():
    makefile = (ROOT / "Makefile").read_text()
    wsgi = (ROOT / "backend" / "wsgi.py").read_text()
    for name, default, _ in SERVE_VARIABLES:
        if name == "LOG_LEVEL":
            assert f'os.environ.get("LOG_LEVEL", "{default}")' in wsgi
        else:
            assert re.search(rf"^{name} \?= {re.escape(default)}$", makefile, re.M), name


def test_the_readme_is_read_in_one_sitting():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail into docs/"


def test_every_docs_page_is_one_link_from_the_readme():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in _links(README)}
    assert DOCS and not [page.name for page in DOCS if page.resolve() not in linked]


@pytest.mark.parametrize("document", [README, *DOCS], ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(document):
    for target in _links(document):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        assert destination.exists(), f"{document.name}: {target} points to no file"
        if anchor:
            assert anchor in _anchors(destination), f"{document.name}: {target} points to no heading"


def _links(document: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", document.read_text()))


def _anchors(document: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", document.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
