"""The dashboard keeps working in a real browser now that every read needs a credential.

Chromium opens a real `serve`'s page: it gets its view cookie with the page and its
same-origin fetches read the status and the events. A page from another origin that
fetches the same routes with the browser's credentials reads nothing, and neither does
a page whose name was rebound to 127.0.0.1 (DNS rebinding, emulated with Chromium's
host resolver rules).
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.e2e.harness import Node, Run

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

ATTACKER_PAGE = """<!doctype html><script>
window.result = (async () => {
  try {
    const answer = await fetch("http://127.0.0.1:%d/status", {credentials: "include"});
    return "read " + (await answer.text()).slice(0, 200);
  } catch (error) { return "blocked: " + error; }
})();
</script>"""


def test_the_dashboard_reads_its_node_and_another_origin_reads_nothing(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        node = Node(run, "desk", None).start()
        port = int(node.api.rsplit(":", 1)[1])
        node_id = node.status()["node"]["node_id"]
        page_dir = tmp_path / "attacker"
        page_dir.mkdir()
        (page_dir / "index.html").write_text(ATTACKER_PAGE % port)
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(page_dir), **k)  # noqa: E731
        attacker = http.server.ThreadingHTTPServer(("127.0.0.2", 0), handler)
        threading.Thread(target=attacker.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page()
                    page.goto(node.cli("dashboard").stdout.strip())  # its one-time link
                    # Selectors, not wait_for_function: the page's CSP forbids the eval that one uses.
                    page.wait_for_selector(f"#node:text-is('{node_id}')", timeout=15_000)
                    page.wait_for_selector("#events tr", timeout=15_000)
                    assert page.text_content("#error") == ""
                    # Same browser, same cookies: a page of another origin gets nothing back.
                    other = browser.new_page()
                    other.goto(f"http://127.0.0.2:{attacker.server_address[1]}/index.html")
                    result = other.evaluate("window.result")
                    assert result.startswith("blocked"), result
                    assert node_id not in result
                finally:
                    browser.close()
                # DNS rebinding: the attacker's name now resolves to 127.0.0.1, so its page and the
                # node share an origin in the browser's eyes. The node answers nothing to that Host.
                rebinding = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"])
                try:
                    page = rebinding.new_page()
                    answer = page.goto(f"http://rebind.test:{port}/")
                    assert answer is not None and answer.status == 400
                    read = page.evaluate("fetch('/status').then(a => a.status + ' ' + a.statusText)")
                    assert read.startswith("400"), read
                    body = page.evaluate("fetch('/api/events').then(a => a.text())")
                    assert node_id not in body and "stream_id" not in body
                finally:
                    rebinding.close()
        finally:
            attacker.shutdown()
            attacker.server_close()
