"""The explorer on GPT-2 small's grid: 12 layers x 12 heads over 1024 tokens is 604 MB of maps, so the
page asks for the maps a view shows, a head at a time, and what it draws is still the API's answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import numpy as np
import pytest

from bundlespec.manifest import TOKENIZER_FILE, read_manifest
from loadtest.browser import full_context_text
from tests.conftest import Server, start_server
from tests.web.pages import NEEDS_CHROMIUM, Page, api

pytestmark = NEEDS_CHROMIUM


@pytest.fixture(scope="module")
def wide_server(toy_bundle, tmp_path_factory) -> Iterator[Server]:
    """GPT-2 small's heads and context (12 x 12, 1024 positions) at a tiny width, random weights and
    the toy tokenizer: the shapes the explorer must cope with, built in seconds."""
    torch = pytest.importorskip("torch")
    from bundlespec.manifest import Architecture
    from export.bundle import write_bundle
    from model.transformer import AttentionLM

    tmp = tmp_path_factory.mktemp("wide")
    vocab = read_manifest(toy_bundle).architecture.vocab_size
    arch = Architecture(vocab_size=vocab, n_layer=12, n_head=12, d_model=48, context_length=1024, dropout=0.0)
    torch.manual_seed(0)
    tokenizer = (toy_bundle / TOKENIZER_FILE).read_text()
    write_bundle(AttentionLM(arch).eval(), tokenizer, {}, tmp / "wide", name="wide", version="1")
    server = start_server(tmp / "wide", tmp)
    yield server
    server.stop()


def attention_requests(page: Page) -> list[dict]:
    bodies: list[dict] = []
    page.page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if "attention/infer" in r.url else None)
    return bodies


def test_a_1024_token_text_on_144_heads_fetches_only_the_maps_each_view_shows(browser, wide_server):
    page = Page(browser, wide_server)
    try:
        asked = attention_requests(page)
        text = full_context_text(wide_server.url, 1024)
        n = len(api(wide_server, "/v1/score", {"texts": [text]})["results"][0]["tokens"])
        assert n > 1000
        page.open(f"text={quote(text)}&view=heatmap&layer=5&head=7")
        # One map, and only it: the heatmap of layer 5, head 7.
        assert [(b["parameters"]["layers"], b["parameters"]["heads"]) for b in asked] == [("5", "7")]
        want = api(wide_server, "/v1/attention", {"texts": [text], "layers": [5], "heads": [7], "queries": [3]})
        want = np.array(want["results"][0]["attention"], dtype=np.float32)[0, 0, 0]
        page.page.evaluate("() => document.getElementById('canvas').scrollIntoView({block: 'start'})")
        box = page.page.locator("#canvas").bounding_box()
        cell, left, top = (float(page.page.get_attribute("#canvas", f"data-{k}")) for k in ("cell", "left", "top"))
        page.page.mouse.move(box["x"] + left + 1.5 * cell, box["y"] + top + 3.5 * cell)
        page.page.wait_for_selector("#cell[data-q='3'][data-k='1']")
        assert np.float32(page.page.get_attribute("#cell", "data-value")) == want[1]

        # The model view fetches nothing: it draws the maps the page has and labels the others.
        page.view("model")
        assert len(asked) == 1 and page.canvas_colours() > 3
        # Picking another head there opens it, fetching that one map.
        box = page.page.locator("#canvas").bounding_box()
        page.page.mouse.click(box["x"] + 28 + 10, box["y"] + 28 + 10)  # layer 0, head 0
        page.page.wait_for_selector("canvas[data-view=heatmap]")
        page.wait()
        assert [(b["parameters"]["layers"], b["parameters"]["heads"]) for b in asked[1:]] == [("0", "0")]

        # The head view of a layer: its twelve heads, one request each; the two fetched are kept.
        page.page.select_option("#layer", "5")
        page.view("head")
        page.wait()
        assert sorted(int(b["parameters"]["heads"]) for b in asked[2:]) == [h for h in range(12) if h != 7]
        assert all(b["parameters"]["layers"] == "5" for b in asked[2:])
        assert page.canvas_colours() > 3

        # Rollout needs every map at once: the page says so instead of asking for 604 MB.
        page.view("rollout")
        assert len(asked) == 13 and page.errors == []
    finally:
        page.close()
