"""The documents' relative links and pictures point at files that exist, and every picture is shown somewhere.

A results section rewritten by hand can lose a figure it names or leave one in ``docs/figures/`` that nothing
shows; both have happened while runs were restored from ``docs/results/`` on a new machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOCUMENTS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"),
                    *(REPO_ROOT / "bundles").glob("*/docs/README.md")])  # fmt: skip
# [text](target) and ![caption](target); the target ends at whitespace or ")" and may carry a #fragment
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FIGURES = REPO_ROOT / "docs" / "figures"


def relative_targets(document: Path) -> list[str]:
    targets = [t.split("#", 1)[0] for t in LINK.findall(document.read_text())]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # skip https:, mailto:, ...


def test_the_documents_are_found():
    names = {p.relative_to(REPO_ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/results.md", "bundles/lmttm/docs/README.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_and_picture_of_a_document_exists(document):
    missing = [t for t in relative_targets(document) if not (document.parent / t).exists()]
    assert not missing, f"{document.relative_to(REPO_ROOT)} links to files that do not exist: {missing}"


def test_every_figure_in_docs_figures_is_shown_by_a_document():
    shown = {(d.parent / t).resolve() for d in DOCUMENTS for t in relative_targets(d)}
    unshown = [p.name for p in sorted(FIGURES.glob("*.png")) if p.resolve() not in shown]
    assert not unshown, f"docs/figures/ holds pictures that no document shows: {unshown}"


def test_a_link_to_a_missing_file_is_caught(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text("![a curve](figures/nowhere.png) [the site](https://monai.io) [a section](#results)\n")
    assert relative_targets(document) == ["figures/nowhere.png"]
    assert not (document.parent / "figures/nowhere.png").exists()
