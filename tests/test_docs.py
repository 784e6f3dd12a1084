"""The README stays an entry page and the manual in docs/ stays whole: every page in the nav, every link
resolving, every performance table rendering from benchmarks/results (the strict build checks the links)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
NEEDS_MKDOCS = "mkdocs not installed (pip install -e '.[docs]')"


def nav_pages(nav) -> list[str]:
    """Every page file named in an mkdocs nav, at any depth."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def test_readme_is_an_entry_page_with_the_quick_start_lines():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    # the two commands .ci/run and the tests rely on, byte for byte
    assert ('python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[ort]" && .venv/bin/sathmr demo -o demo_out'
            in text.splitlines())
    assert '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -q' in text.splitlines()
    assert "\npython -m pytest -q\n" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", README.read_text())
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_docs_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of mkdocs) not installed")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = set(nav_pages(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), "pages missing from mkdocs.yml nav"
    assert in_nav - pages == set(), "nav entries without a page"


def test_every_perf_marker_renders_from_the_results_with_its_machine():
    sys.path.insert(0, str(DOCS))
    try:
        import gen_perf
    finally:
        sys.path.remove(str(DOCS))
    used = {m for p in DOCS.rglob("*.md") for m in gen_perf.MARKER.findall(p.read_text())}
    assert used == set(gen_perf.TABLES), "every table is used and every marker is known"
    cpu = json.loads((gen_perf.RESULTS / "results.json").read_text())["machine"]["cpu"]
    page = gen_perf.render("# x\n\n{{ perf results }}\n\n{{ perf scaling }}\n", depth=1)
    assert "{{ perf" not in page and f"**Machine:** {cpu}" in page and "](../img/scaling.png)" in page
    with pytest.raises(KeyError, match="unknown perf table"):
        gen_perf.render("{{ perf no_such_table }}")


@pytest.mark.slow     # ~15 s: the whole site, API pages included
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(NEEDS_MKDOCS)
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "img" / "scaling.png").is_file()
    cpu = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())["machine"]["cpu"]
    perf = (site / "performance" / "index.html").read_text()
    assert "{{ perf" not in perf and cpu in perf
    assert "load_strict" in (site / "reference" / "checkpoint" / "index.html").read_text()
