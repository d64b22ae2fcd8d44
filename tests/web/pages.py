"""The explorer's page in a real browser, for the tests: Debian's chromium driven by Playwright,
against the real server, and how the tests read what the page drew."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest

from loadtest.browser import CHROMIUM
from tests.conftest import Server

NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
TEXT = "I do not like hate. we do"  # the page's text unless a test opens another


class Page:
    """A browser page on the explorer that records console errors and every URL it asks for."""

    def __init__(self, browser, server: Server, **context) -> None:
        self.server = server
        self.context = browser.new_context(viewport={"width": 1200, "height": 900}, **context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, query: str = f"text={quote(TEXT)}", status: str = "ready") -> None:
        self.page.goto(f"{self.server.url}/?{query}")
        self.wait(status)

    def wait(self, status: str = "ready", timeout: float = 30_000) -> None:
        self.page.wait_for_selector(f"body[data-status={status}]", timeout=timeout)

    def view(self, name: str) -> None:
        self.page.click(f"#views [data-view={name}]")
        self.page.wait_for_selector(f"canvas[data-view={name}]")

    def canvas_colours(self) -> int:
        """How many distinct colours the canvas holds: a blank canvas has one."""
        return self.page.evaluate(
            """() => { const c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                const seen = new Set();
                for (let i = 0; i < d.length; i += 16) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
                return seen.size; }"""
        )

    def canvas_png(self) -> str:
        return self.page.evaluate("() => document.getElementById('canvas').toDataURL()")

    def close(self) -> None:
        self.context.close()


def api(server: Server, path: str, body: dict) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def grid_point(page: Page, kind: str, r: int, c: int) -> tuple[float, float]:
    """Where on the screen a labelled heatmap's cell (row r, column c) is, from the drawing's own layout."""
    grids = json.loads(page.page.get_attribute("#canvas", "data-grids"))
    g = next(g for g in grids if g["kind"] == kind)
    # The canvas scrolls inside its frame: bring the cell into view first.
    page.page.evaluate(
        """(y) => { const w = document.querySelector('.canvas-wrap');
            w.scrollIntoView({block: 'start'}); w.scrollTop = Math.max(0, y - 100); }""",
        g["y0"] + r * g["cell"],
    )
    box = page.page.locator("#canvas").bounding_box()
    return box["x"] + g["x0"] + (c + 0.5) * g["cell"], box["y"] + g["y0"] + (r + 0.5) * g["cell"]


def titles_fit(page: Page) -> bool:
    """Every heatmap title on the canvas fits inside it, in the font it is drawn with."""
    return page.page.evaluate(
        """() => { const c = document.getElementById('canvas');
            const m = document.createElement('canvas').getContext('2d');
            m.font = '13px system-ui, sans-serif';
            const grids = JSON.parse(c.dataset.grids);
            return grids.length > 0 && grids.every(g => m.measureText(g.title).width + 4 <= c.clientWidth); }"""
    )
