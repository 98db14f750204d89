"""Finding 9: `sql` stops a query that runs too long and calls only allowed functions; a control
server without TLS warns loudly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import cli
from events import types as ev
from store import open_store
from store.errors import ReadOnlyStatement
from store.readonly import QueryTooSlow, run_query

FOREVER = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"


@pytest.fixture
def database(any_db_url: str) -> str:
    with open_store(any_db_url) as store:
        store.append("party:n1:p1", [ev.PartyJoined(party_id="p1", name="LAN", local_peer_id="me")], 0)
    return any_db_url


def test_a_query_that_never_ends_is_stopped_at_its_time_limit(database: str) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTooSlow, match="longer than 1 s"):
        run_query(database, FOREVER, time_limit_s=1.0)
    assert time.monotonic() - started < 5
    rows = run_query(database, "SELECT count(*) FROM events", time_limit_s=1.0).rows
    assert rows == [(1,)]


def test_sql_calls_only_allowed_functions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with open_store(url) as store:
        store.append("party:n1:p1", [ev.PartyJoined(party_id="p1", name="LAN", local_peer_id="me")], 0)
    for statement in ("SELECT hex(fts3_tokenizer('simple'))", "SELECT load_extension('x')",
                      "SELECT sqlite_version()"):
        with pytest.raises(ReadOnlyStatement, match="function `sql` does not allow"):
            run_query(url, statement)
    allowed = run_query(url, "SELECT upper(json_extract(payload, '$.name')), count(*), "
                             "strftime('%Y', recorded_at) > '2000' FROM events")
    assert allowed.rows == [("LAN", 1, 1)]
    assert cli.main(["sql", "SELECT hex(fts3_tokenizer('simple'))", "--db", url]) != 0
    assert "does not allow" in capsys.readouterr().err


def test_control_server_without_tls_warns_loudly(tmp_path: Path) -> None:
    from tests.e2e.harness import Run, free_port, wait_for

    with Run(tmp_path) as run:
        run.start("plain", "control-server", "--listen", f"127.0.0.1:{free_port()}", "--state-dir",
                  str(tmp_path / "plain"))
        run.start("tls", "control-server", "--listen", f"127.0.0.1:{free_port()}", "--state-dir",
                  str(tmp_path / "tls"), "--tls-self-signed")
        for name in ("plain", "tls"):
            wait_for(lambda n=name: "nodes use" in run.log(n).read_text(), 20, f"the {name} server")
        plain, tls = run.log("plain").read_text(), run.log("tls").read_text()
    assert "WARNING: no TLS: party secrets and relay ticket keys cross the network in clear" in plain
    assert "--tls-self-signed" in plain
    assert "WARNING" not in tls and "wss://" in tls


def test_no_third_party_docs_and_a_strict_content_security_policy(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.reader import StoreReader
    from tests.api.conftest import TOKEN, FakeService, record_party

    url = f"sqlite:///{tmp_path / 'node.db'}"
    record_party(url)
    app = create_app(FakeService(), StoreReader(url), TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8666") as browser:
        for path in ("/docs", "/redoc"):
            assert browser.get(path).status_code in (401, 404), path  # no page, no foreign script
        for path, status in (("/status", 401), ("/", 401), ("/openapi.json", 200)):
            answer = browser.get(path)
            assert answer.status_code == status, path
            policy = answer.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'sha256-" in policy, policy
            assert "unsafe-inline" not in policy and "http" not in policy and "cdn" not in policy
