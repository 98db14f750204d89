"""The dashboard in headless Chromium reaches yesterday's drop and draws no line across an outage.

The node's API (a fake agent, the log of test_timeline_routes) serves the real page; the
browser runs in Europe/Berlin, so 08:00 UTC shows as 09:00 CET.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from api.app import create_app
from api.reader import StoreReader
from tests.api.conftest import TOKEN, FakeService
from tests.api.test_timeline_routes import record

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 15_000


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    record(url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(FakeService(), StoreReader(url), TOKEN),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the API did not start"
    try:
        # The dashboard opens with a one-time code, as `lanrage dashboard` prints it.
        answer = httpx.post(f"http://127.0.0.1:{port}/dashboard/code",
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        yield f"http://127.0.0.1:{port}{answer.json()['path']}"
    finally:
        server.should_exit = True
        thread.join(10)


def _rows(page: Page) -> list[list[str]]:
    return page.eval_on_selector_all("#timeline tr",
                                     "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def _wait_for_page(page: Page, words: str) -> None:
    # A locator assertion, not wait_for_function: the page's CSP forbids evaluating strings.
    expect(page.locator("#timeline-page")).to_have_text(words, timeout=WAIT_MS)


def test_the_timeline_pages_back_filters_and_explains_a_drop(dashboard: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(timezone_id="Europe/Berlin", locale="en-GB")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(dashboard)
            _wait_for_page(page, "100 rows, the newest")
            assert page.text_content("#timeline-time") == "time (Europe/Berlin)"
            # Bob's last drop: 08:00 UTC + 47 h 55 min, in CET.
            assert _rows(page)[0][:3] == ["2026-11-26 08:55:00 CET", "Bob", "connected → connecting"]

            for back in range(1, 6):
                page.click("#timeline-older")
                _wait_for_page(page, f"{100 if back < 5 else 78} rows, page {back + 1} back from the newest")
            oldest = _rows(page)[-1]
            assert oldest[:3] == ["2026-11-24 09:00:01 CET", "Carol", "∅ → connecting"]
            assert page.is_disabled("#timeline-older") and not page.is_disabled("#timeline-newer")

            # Bob between 11:00 and 12:00 local time on the first day: six drops, six recoveries.
            page.select_option("#timeline-peer", label="Bob")
            page.fill("#timeline-since", "2026-11-24T11:00:00")
            page.fill("#timeline-until", "2026-11-24T12:00:00")
            page.click("#timeline-show")
            _wait_for_page(page, "12 rows, the newest")
            rows = _rows(page)
            assert rows[0][0] == "2026-11-24 11:55:00 CET" and rows[-1][0] == "2026-11-24 11:00:05 CET"
            assert {row[1] for row in rows} == {"Bob"}

            # A click on the first day's drop shows its diagnosis.
            page.locator("#timeline tr:has(td.drop)").first.click()
            page.wait_for_selector("#detail-cause .cause", timeout=WAIT_MS)
            title = "Bob after ConnectionStateChanged at 2026-11-24 11:55:00 CET"
            assert page.text_content("#detail-title") == title
            assert page.text_content("#detail-cause .cause").startswith("Cause: ")

            # Bob's chart: three up periods with samples, none joined across the drops between; the
            # last one's first window had no answer, so its first probe stands alone.
            page.wait_for_selector("svg.chart[data-peer='Bob'] circle", timeout=WAIT_MS)
            chart = page.eval_on_selector("svg.chart[data-peer='Bob']",
                                          "c => [c.dataset.segments, c.querySelectorAll('polyline').length, "
                                          "c.querySelectorAll('circle').length]")
            assert chart == ["4", 4, 8]  # the first probe of each reconnection, and five samples
            assert errors == []
        finally:
            browser.close()
