"""The attention explorer in Debian's chromium: screenshots for the docs, and the full-context render time.

    python -m loadtest.explorer --screenshots docs/explorer    (make screenshots)

Both start the service on the default bundle on a free loopback port.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from loadtest.browser import chromium, full_context_text, open_explorer
from loadtest.harness import ROOT, Server, service_env

log = logging.getLogger("explorer")
SAMPLE = "ROMEO:\nBut soft, what light through yonder window breaks?"
# name: (query, what to do on the page before the picture)
SHOTS = {
    "head-view": (f"text={quote(SAMPLE)}&layer=2&view=head", None),
    "model-view": (f"text={quote(SAMPLE)}&view=model", None),
    "heatmap": (f"text={quote(SAMPLE)}&layer=3&head=5&view=heatmap", "hover"),
    "rollout": (f"text={quote(SAMPLE)}&view=rollout", None),
    "generate": (f"text={quote('KING HENRY:')}&layer=3&head=mean&view=generate", "generate"),
}


def start(bundle: Path, work: Path) -> Server:
    server = Server("explorer", [sys.executable, "-m", "service"], service_env(bundle), work)
    server.wait_ready("/readyz")
    return server


def screenshots(bundle: Path, out: Path, work: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    server = start(bundle, work)
    written = []
    try:
        with chromium() as browser:
            for scheme in ("light", "dark"):
                for name, (query, action) in SHOTS.items():
                    if scheme == "dark" and name != "model-view":
                        continue  # one dark picture shows the scheme
                    page = open_explorer(browser, server.url, query, color_scheme=scheme)
                    if action == "hover":
                        box = page.locator("#canvas").bounding_box()
                        cell, left, top = (
                            float(page.get_attribute("#canvas", f"data-{k}")) for k in ("cell", "left", "top")
                        )
                        page.mouse.move(box["x"] + left + 3.5 * cell, box["y"] + top + 8.5 * cell)
                    if action == "generate":
                        page.fill("#gen-n", "12")
                        page.click("#generate")
                        page.wait_for_function("() => document.getElementById('step').max === '11'")
                        page.wait_for_selector("body[data-status=ready]")
                        page.fill("#step", "7")
                    path = out / (f"{name}.png" if scheme == "light" else f"{name}-{scheme}.png")
                    page.screenshot(path=str(path), full_page=False)
                    page.context.close()
                    written.append(path)
                    log.info("wrote %s", path)
    finally:
        server.stop()
    return written


def render_bench(bundle: Path, work: Path, reps: int = 5) -> dict:
    """The model view at the full context: every layer x head map drawn, from the page's own clock
    (the drawing) and from the client's (load to drawn, with the three API calls)."""
    server = start(bundle, work)
    try:
        text = full_context_text(server.url, 256)
        draw, total = [], []
        with chromium() as browser:
            for _ in range(reps + 1):  # the first warms the browser's caches
                started = time.perf_counter()
                page = open_explorer(browser, server.url, f"text={quote(text)}&view=model")
                total.append((time.perf_counter() - started) * 1000)
                draw.append(float(page.get_attribute("#canvas", "data-render-ms")))
                tokens = len(page.query_selector_all("#tokens span"))
                page.context.close()
    finally:
        server.stop()
    return {
        "tokens": tokens,
        "reps": reps,
        "draw_ms": statistics.median(draw[1:]),
        "load_ms": statistics.median(total[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m loadtest.explorer", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "attnserve-shakespeare" / "1")
    p.add_argument("--screenshots", type=Path, default=ROOT / "docs" / "explorer", help="folder for the pictures")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        screenshots(args.bundle, args.screenshots, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
