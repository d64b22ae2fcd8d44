"""The browser and a page on the toy server, for the explorer's tests (tests/web/pages.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.browser import CHROMIUM, FLAGS
from tests.web.pages import Page


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, toy_server) -> Iterator[Page]:
    p = Page(browser, toy_server)
    yield p
    p.close()
