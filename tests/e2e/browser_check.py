"""Loads a node's dashboard in headless Chromium and reports what a person would see, as JSON.

Run inside the node's network namespace (the API listens on its loopback):
``python tests/e2e/browser_check.py URL SCREENSHOT.png``. Debian's ``chromium`` only;
Playwright never downloads a browser here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000  # the dashboard refreshes every 2 s; a lab node answers in well under a second


def check(url: str, screenshot: str) -> dict[str, Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url, wait_until="domcontentloaded", timeout=WAIT_MS)
            page.wait_for_selector("#parties table tr:nth-child(2)", timeout=WAIT_MS)
            page.wait_for_selector("svg.chart circle", timeout=WAIT_MS)
            page.wait_for_selector("#timeline tr", timeout=WAIT_MS)
            peers = page.eval_on_selector_all(
                "#parties table tr", "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent))")
            charts = page.eval_on_selector_all(
                "svg.chart", "charts => charts.map(c => ({peer: c.dataset.peer, "
                             "points: c.querySelectorAll('circle').length, "
                             "line: c.querySelector('polyline') !== null}))")
            # A drop if there is one: its detail also names the cause (`diagnose`).
            drops = page.locator("#timeline tr:has(td.drop)")
            row = drops.first if drops.count() else page.locator("#timeline tr").first
            clicked = [cell.strip() for cell in row.locator("td").all_text_contents()]
            row.click()
            page.wait_for_selector("#detail:not([hidden])", timeout=WAIT_MS)
            page.wait_for_selector("#detail-world tr", timeout=WAIT_MS)
            if drops.count():
                page.wait_for_selector("#detail-cause .cause", timeout=WAIT_MS)
            detail = page.inner_text("#detail")
            page.screenshot(path=screenshot, full_page=True)
            return {"peers": peers, "charts": charts, "clicked": clicked, "detail": detail,
                    "error_banner": page.inner_text("#error"), "page_errors": errors}
        finally:
            browser.close()


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], sys.argv[2])))
