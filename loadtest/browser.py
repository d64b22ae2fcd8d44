"""Debian's chromium through Playwright, as the explorer's tests, screenshots and benchmark drive it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# This machine has no network beyond loopback: without these, chromium's own background
# connections fail many at a time at every start.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium, never downloaded: Playwright gets the system browser's path."""
    if CHROMIUM is None:
        raise RuntimeError("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def full_context_text(server_url: str, context: int) -> str:
    """The load test's prompts, cut to exactly the model's context by the server's own tokenizer."""
    import httpx

    from loadtest.workload import load_prompts

    text = " ".join(" ".join(load_prompts()).split())
    ids = httpx.post(f"{server_url}/tokenize", json={"prompt": text}).json()["tokens"][-context:]
    return httpx.post(f"{server_url}/detokenize", json={"tokens": ids}).json()["prompt"]


def open_explorer(browser: Any, url: str, query: str, **context: Any) -> Any:
    """A page on the explorer at `query`, once it has drawn (or shown an error)."""
    page = browser.new_context(viewport={"width": 1100, "height": 900}, **context).new_page()
    page.goto(f"{url}/explorer/?{query}")
    page.wait_for_selector("body[data-status=ready], body[data-status=error]", timeout=60_000)
    return page
