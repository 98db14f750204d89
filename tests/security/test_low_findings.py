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


# What a read-only transaction still lets any role do on PostgreSQL: end its own role's other
# sessions (the agent's), turn the time limit off, sleep, hold a lock, read settings, run SQL
# from a string. pg_read_file and lo_import need rights this role lacks; refused before that.
PG_REFUSED = (
    # Only the sessions of this test's own database: the server may be shared.
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
    "AND datname = current_database()",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT count(*) FROM pg_catalog.pg_sleep(0.2)",
    "SELECT 1 WHERE EXISTS (SELECT pg_advisory_lock(42))",
    "SELECT current_setting('data_directory')",
    "SELECT query_to_xml('SELECT * FROM events', true, true, '')",
    "SELECT pg_read_file('/etc/hostname')",
    "SELECT lo_import('/etc/hostname')",
    "EXPLAIN SELECT dblink('dbname=x', 'SELECT 1')",
)


@pytest.mark.postgres
def test_sql_on_postgresql_calls_only_allowed_functions(pg_url: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from sqlalchemy import create_engine, text

    with open_store(pg_url) as store:
        store.append("party:n1:p1", [ev.PartyJoined(party_id="p1", name="LAN", local_peer_id="me")], 0)
    bystander_engine = create_engine(pg_url)  # a session of the same role, as the agent's store holds
    try:
        with bystander_engine.connect() as bystander:
            bystander.execute(text("SELECT 1"))
            for statement in PG_REFUSED:
                with pytest.raises(ReadOnlyStatement, match="a function `sql` does not allow"):
                    run_query(pg_url, statement)
            assert bystander.execute(text("SELECT 1")).scalar() == 1  # still alive
    finally:
        bystander_engine.dispose()
    for statement, refusal in (("WITH gone AS (DELETE FROM events RETURNING 1) SELECT * FROM gone",
                                "refusing DELETE inside the query"),
                               ("SELECT 1 FROM events FOR UPDATE", "refusing FOR UPDATE"),
                               ("SELECT 1; SELECT 2", "one statement at a time"),
                               ("SELECT 1 OPERATOR(public.+) 1", "operator public.+")):
        with pytest.raises(ReadOnlyStatement, match=re.escape(refusal)):
            run_query(pg_url, statement)
    allowed = run_query(pg_url, "SELECT upper(payload->>'name'), count(*), EXTRACT(year FROM recorded_at "
                                "AT TIME ZONE 'UTC') > 2000 FROM events GROUP BY 1, 3")
    assert allowed.rows == [("LAN", 1, True)]
    document = (Path(__file__).resolve().parents[2] / "docs" / "store.md").read_text()
    examples = re.findall(r"<!-- example: [\w-]+ -->\s*```sql\n(.*?)```", document, re.DOTALL)
    assert len(examples) >= 5
    for example in examples:  # every documented query is allowed
        run_query(pg_url, example)
    assert cli.main(["sql", "SELECT pg_sleep(30)", "--db", pg_url]) != 0
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
