"""The local API against a web page: DNS rebinding, cross-site reads, and secrets in answers.

A page on any site can send requests to 127.0.0.1; after DNS rebinding its own origin
even resolves to 127.0.0.1 and it reads the answers, but its requests carry its own
Host. The app here is the real FastAPI app on a real event store (tests/api/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import VIEW_COOKIE, create_app
from api.reader import StoreReader
from tests.api.conftest import TOKEN, FakeService, record_party

DATA_ROUTES = ("/status", "/api/metrics/summary", "/api/metrics/peers", "/api/metrics/peers/bob",
               "/api/events", "/api/peers/bob/history", "/metrics")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(tmp_path: Path) -> object:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    record_party(url)
    return create_app(FakeService(), StoreReader(url), TOKEN, listen_host="192.0.2.7")


def test_a_rebinding_page_gets_nothing_even_with_the_token_or_the_cookie(app: object) -> None:
    with TestClient(app, base_url="http://attacker.example:8666") as page:  # type: ignore[arg-type]
        page.cookies.set(VIEW_COOKIE, "x")
        for path in ("/", *DATA_ROUTES):
            answer = page.get(path, headers=AUTH)
            assert answer.status_code == 400, path
            assert "bob" not in answer.text and "Friday" not in answer.text
        assert page.post("/party/create", json={"name": "x"}, headers=AUTH).status_code == 400


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "192.0.2.7"])
def test_own_names_are_served_but_data_needs_the_token(app: object, host: str) -> None:
    with TestClient(app, base_url=f"http://{host}:8666") as client:  # type: ignore[arg-type]
        for path in DATA_ROUTES:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert "bob" not in refused.text
            assert client.get(path, headers=AUTH).status_code == 200, path


def test_the_dashboard_reads_with_its_view_cookie_but_cannot_write(app: object) -> None:
    with TestClient(app, base_url="http://127.0.0.1:8666") as browser:  # type: ignore[arg-type]
        opened = browser.post("/dashboard/code", headers=AUTH).json()["path"]
        page = browser.get(opened, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/"
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert TOKEN not in page.text and TOKEN not in cookie  # the token itself never leaves the node
        assert browser.get("/status").status_code == 200  # same-origin fetch carries the cookie
        assert browser.post("/party/create", json={"name": "x"}).status_code == 401


def test_no_answer_carries_the_token(app: object) -> None:
    with TestClient(app, base_url="http://127.0.0.1:8666") as client:  # type: ignore[arg-type]
        for path in ("/", "/openapi.json", *DATA_ROUTES):
            answer = client.get(path, headers=AUTH)
            assert TOKEN not in answer.text and TOKEN not in str(answer.headers), path


def test_a_plain_get_of_the_dashboard_gives_no_cookie_and_a_code_works_once(app: object) -> None:
    with TestClient(app, base_url="http://127.0.0.1:8666") as browser:  # type: ignore[arg-type]
        plain = browser.get("/")
        assert plain.status_code == 401 and "set-cookie" not in plain.headers
        assert "lanrage dashboard" in plain.text and "<script>" not in plain.text
        assert browser.get("/status").status_code == 401  # no cookie came with the page
        assert browser.post("/dashboard/code").status_code == 401  # a code needs the token
        opened = browser.post("/dashboard/code", headers=AUTH).json()
        assert opened["expires_in_s"] == 60 and opened["path"].startswith("/?code=")
        first = browser.get(opened["path"], follow_redirects=False)
        assert first.status_code == 303 and VIEW_COOKIE in first.headers["set-cookie"]
        assert browser.get("/status").status_code == 200 and "<script>" in browser.get("/").text
        browser.cookies.clear()
        again = browser.get(opened["path"], follow_redirects=False)  # spent
        assert again.status_code == 401 and "set-cookie" not in again.headers
        assert browser.get("/?code=guess", follow_redirects=False).status_code == 401
