"""The README and docs/ read as a newcomer reads them: what they state is what the committed models
serve (tests/test_docs.py runs their examples; this checks the tables and figures in their prose)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from prometheus_client import generate_latest

from bundlespec import BUNDLE_FORMAT
from tests.conftest import DEFAULT_BUNDLE, ROOT

README = (ROOT / "README.md").read_text()
DOCS = {page.name: page.read_text() for page in (ROOT / "docs").glob("*.md")}
EVERY_PAGE = README + "".join(DOCS.values())


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    from tests.conftest import start_server

    server = start_server(DEFAULT_BUNDLE, tmp_path_factory.mktemp("readme"))
    yield server
    server.stop()


def _section(title: str, page: str) -> str:
    text = DOCS[page]
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start : end if end > 0 else None]


def test_the_logit_lens_table_is_what_the_model_serves(default_server):
    text = "ROMEO:\nBut soft, what light through yonder"
    assert "ROMEO:\\nBut soft, what light through yonder" in DOCS["interpretability.md"]
    body = {"texts": [text], "top_k": 1, "positions": "last"}
    lens = httpx.post(default_server.url + "/v1/logit-lens", json=body).json()["results"][0]["lens"]
    served = [(depth[0][0]["token"], f"{depth[0][0]['prob']:.3f}") for depth in lens]
    shown = re.findall(
        r"^\| \d[^|]* \| `([^`]*)` \| ([0-9.]+) \|$", _section("**The logit lens.**", "interpretability.md"), re.M
    )
    assert shown == served


def test_the_models_example_has_the_served_fields(default_server):
    served = httpx.get(default_server.url + "/v1/models").json()["data"][0]
    example = re.search(r'"precision":(\{[^}]*\})', DOCS["api.md"])
    assert example and set(json.loads(example.group(1).replace("\n", ""))) == set(served["precision"])
    one = httpx.get(default_server.url + "/v1/models/attnserve-shakespeare")
    assert one.status_code == 200 and one.json()["id"] == served["id"]


def test_the_routes_table_lists_every_route(default_server):
    paths = httpx.get(default_server.url + "/openapi.json").json()["paths"]
    table = _section("| method and path |", "api.md")
    missing = [
        f"{method.upper()} {path}"
        for path, methods in paths.items()
        if not path.startswith("/v2")  # the v2 section has its own table
        for method in methods
        if f"`{method.upper()} {path}`" not in table
    ]
    assert missing == []


def test_the_tokenizer_examples_answer_as_shown(default_server):
    for route in ("/tokenize", "/detokenize"):
        call = re.search(rf"curl -s localhost:8000{route} .* -d '(.*)'", DOCS["api.md"])
        assert call, route
        answer = httpx.post(default_server.url + route, json=json.loads(call.group(1))).json()
        assert json.dumps(answer, separators=(",", ":")) in DOCS["api.md"], (route, answer)


def test_the_docs_name_every_metric_and_only_those():
    from service.server.metrics import Metrics

    exposed = set()
    for line in generate_latest(Metrics().registry).decode().splitlines():
        if line.startswith("# TYPE attnserve_"):
            _, _, name, kind = line.split()
            exposed.add(name if kind != "counter" or name.endswith("_total") else name + "_total")
    named = set(re.findall(r"`(attnserve_[a-z_]+)", EVERY_PAGE))
    assert named == exposed, {"named, not exposed": named - exposed, "exposed, not named": exposed - named}


def test_the_bundle_description_matches_the_committed_bundles():
    files = sorted(p.name for p in DEFAULT_BUNDLE.iterdir())
    described = _section("A bundle is a directory", "model.md")
    assert f"bundle format {BUNDLE_FORMAT};" in described
    assert [f for f in files if f"`{f}`" not in described] == []
    toy = ROOT / "bundles" / "toy" / "1"
    size_kb = sum(f.stat().st_size for f in toy.iterdir()) / 1e3
    stated = re.search(r"python -m export.toy --out bundles/toy/1`, a few seconds; (\d+) KB", DOCS["repository.md"])
    assert stated and abs(int(stated.group(1)) - size_kb) < 1.5, (stated and stated.group(1), size_kb)


def test_the_v2_section_names_every_job():
    from service.api.kserve.jobs import MODELS

    paragraph = _section("**One v2 model per job of each loaded model**", "kserve.md")
    assert [job for job in MODELS if f"`<model>.{job}`" not in paragraph] == []
    assert [job for job in MODELS if f"`{job}`" not in paragraph] == []


def test_every_page_is_listed_and_every_link_leads_somewhere():
    index = DOCS["README.md"]
    assert [page for page in DOCS if page != "README.md" and f"]({page})" not in index] == []
    for name, text in [("../README.md", README), *DOCS.items()]:
        base = ROOT if name == "../README.md" else ROOT / "docs"
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (base / target).exists(), (name, target)
