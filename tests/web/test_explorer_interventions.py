"""The explorer's intervention views in a real browser: patching, logit attribution, and steering in the
generate view, each showing what the API answers."""

from __future__ import annotations

import json
from urllib.parse import quote

from tests.web.pages import NEEDS_CHROMIUM, api, grid_point, titles_fit

pytestmark = NEEDS_CHROMIUM


def test_the_patching_view_draws_both_heatmaps_and_a_click_gives_the_cells_numbers(page):
    page.open(f"text={quote('we not like')}&view=patch")
    page.page.fill("#patch-corrupted", "we do like")
    page.page.click("#patch")
    page.page.wait_for_function("() => document.getElementById('canvas').dataset.grids?.includes('patch-heads')")
    page.wait()
    want = api(page.server, "/v1/patch", {"clean": "we not like", "corrupted": "we do like"})
    grids = json.loads(page.page.get_attribute("#canvas", "data-grids"))
    assert [g["kind"] for g in grids] == ["patch-heads", "patch-positions"] and titles_fit(page)
    assert all("0 is the corrupted run" in g["units"] for g in grids) and page.canvas_colours() > 5
    page.page.mouse.click(*grid_point(page, "patch-heads", 0, 2))
    cell = page.page.inner_text("#cell")
    assert cell.startswith("layer 0, head 2:") and str(want["sites"]["heads"]["score"][0][2]) in cell
    page.page.select_option("#patch-site", "mlp_out")
    page.page.mouse.click(*grid_point(page, "patch-positions", 0, 1))
    cell = page.page.inner_text("#cell")
    assert cell.startswith("mlp_out, layer 0, position 1") and str(want["sites"]["mlp_out"]["logit_diff"][0][1]) in cell
    assert page.errors == []


def test_the_attribution_view_shows_each_part_of_the_logit(page):
    page.open(f"text={quote('we not like')}&view=attribution")
    page.page.wait_for_function("() => document.getElementById('canvas').dataset.titles?.includes('attribution')")
    page.wait()
    (want,) = api(page.server, "/v1/logit-attribution", {"texts": ["we not like"]})["results"]
    box = page.page.locator("#canvas").bounding_box()
    page.page.mouse.move(box["x"] + 200, box["y"] + 30 + 3.5 * 16)  # the fourth bar: head 0.2
    tip = page.page.inner_text("#tooltip")
    assert tip.startswith("head 0.2: ") and str(want["heads"][0][2]) in tip and page.errors == []


def test_steering_in_the_generate_view_shows_plain_and_steered_side_by_side(page):
    page.open(f"text={quote('we not like')}&view=generate")
    page.page.fill("#gen-n", "4")
    page.page.fill("#steer-add", " do")
    page.page.fill("#steer-subtract", " not")
    page.page.select_option("#steer-layer", "0")
    page.page.fill("#steer-scale", "1.5")
    page.page.click("#generate")
    page.page.wait_for_function("() => document.getElementById('steered-text').textContent !== ''")
    page.wait()
    body = {"prompt": "we not like", "max_tokens": 4, "temperature": 0, "ablate": []}
    steer = [{"layer": 0, "vector": {"add": " do", "subtract": " not"}, "scale": 1.5}]
    plain = api(page.server, "/v1/completions", body)["choices"][0]["text"]
    steered = api(page.server, "/v1/completions", {**body, "steer": steer})["choices"][0]["text"]
    assert page.page.inner_text("#plain-text") == plain.strip() or page.page.text_content("#plain-text") == plain
    assert page.page.text_content("#steered-text") == steered and steered != plain
    assert page.errors == []
