"""The project's documentation (docs/) stays true to the code: docs/api.md's endpoint reference is
the one service/openapi_docs.py generates from the app's OpenAPI document, docs/methods.md has a
section for every method GET /v1/methods lists, and every link between README.md and docs/ lands
on a file and a heading that exist."""

from __future__ import annotations

import json
import re

import pytest

from api_tests.harness import REPO
from kdserve.service import openapi_docs
from kdserve.service.spec.catalog import catalog as spec_catalog

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", DOCS / "api.md", DOCS / "methods.md", DOCS / "design.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return "".join(ch for ch in text if ch.isalnum() or ch in " -_").replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    found |= set(re.findall(r'<a id="([^"]+)"></a>', text))
    return found


def test_the_api_reference_is_the_generated_one():
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    fresh = openapi_docs.splice(current, openapi_docs.markdown(openapi_docs.openapi_schema()))
    assert fresh == current, ("docs/api.md's endpoint reference is out of date: "
                              "run .venv/bin/python -m kdserve.service.openapi_docs --write")


def test_the_reference_names_every_operation():
    generated = openapi_docs.markdown(openapi_docs.openapi_schema())
    for path, item in openapi_docs.openapi_schema()["paths"].items():
        for method in set(item) & set(openapi_docs.METHODS):
            assert f"#### `{method.upper()} {path}`" in generated


def test_splice_refuses_a_document_without_markers():
    with pytest.raises(ValueError):
        openapi_docs.splice("# no markers here\n", "generated")
    spliced = openapi_docs.splice(f"a\n{openapi_docs.BEGIN}\nold\n{openapi_docs.END}\nb\n", "new\n")
    assert spliced == f"a\n{openapi_docs.BEGIN}\n\nnew\n\n{openapi_docs.END}\nb\n"


def test_every_listed_method_has_a_section_in_methods_md():
    catalog = spec_catalog()
    names = [m["name"] for m in catalog["methods"]] + [r["name"] for r in catalog.get("refinements", [])]
    have = anchors((DOCS / "methods.md").read_text(encoding="utf-8"))
    missing = [name for name in names if name not in have]
    assert not missing, f"docs/methods.md has no section (anchor) for {missing}"


def test_methods_md_gives_every_parameter_its_default():
    """Each method's section has a row `| `param` | `default` |` per parameter GET /v1/methods lists."""
    catalog = spec_catalog()
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    wrong = []
    for method in catalog["methods"] + catalog.get("refinements", []):
        section = re.search(rf"^### `{method['name']}`\n(.*?)(?=^#)", text + "\n#", flags=re.M | re.S)
        body = section.group(1) if section else ""
        for name, schema in method["params"].get("properties", {}).items():
            if f"| `{name}` | `{json.dumps(schema.get('default'))}` |" not in body:
                wrong.append(f"{method['name']}.{name}")
    assert not wrong, f"docs/methods.md lacks or misstates the default of {wrong}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_the_pages_land(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"
