"""``lanrage sql``: times in local time with their zone's name, on SQLite and PostgreSQL.

The log is docs/store.md's example log (tests/migrations/test_examples.py), recorded from
10:00 UTC on 2026-11-25; local time is Europe/Berlin (CET, UTC+1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import cli
from store import open_store
from store.readonly import list_views
from tests.migrations.test_examples import START, ZONE, fill


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only TZ: PostgreSQL's session zone must come from ``lanrage sql`` itself, not from PGTZ."""
    monkeypatch.delenv("PGTZ", raising=False)
    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_times_print_in_local_time_with_the_zone(any_db_url: str, berlin: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fill(any_db_url)
    # The 14-minute direct sample: recorded 10:15:04 UTC, its first window from 10:01:04 UTC
    # (first_at is ISO 8601 text with an offset on SQLite).
    code, out, err = run(["sql", "SELECT recorded_at, first_at FROM peer_metrics WHERE windows = 28",
                          "--db", any_db_url], capsys)
    assert code == 0, err
    assert "2026-11-25 11:15:04.000 CET" in out and "2026-11-25 11:01:04.000 CET" in out
    assert "10:15:04" not in out and "10:01:04" not in out
    # An aggregate of a time column is a time too.
    code, out, err = run(["sql", "SELECT MAX(recorded_at) FROM node_stops", "--db", any_db_url], capsys)
    assert code == 0, err
    assert "2026-11-26 09:13:20.000 CET" in out and "08:13:20" not in out
    code, out, err = run(["sql", "SELECT recorded_at, first_at FROM peer_metrics WHERE windows = 28",
                          "--db", any_db_url, "--utc"], capsys)
    assert "2026-11-25 10:15:04.000 UTC" in out and "2026-11-25 10:01:04.000 UTC" in out
    code, out, err = run(["sql", "SELECT recorded_at, first_at FROM peer_metrics WHERE windows = 28",
                          "--db", any_db_url, "--json"], capsys)
    row = json.loads(out)
    assert datetime.fromisoformat(row["recorded_at"]) == START + timedelta(seconds=904)
    assert datetime.fromisoformat(row["first_at"]) == START + timedelta(seconds=64)
    assert datetime.fromisoformat(row["recorded_at"]).utcoffset() is not None


def test_hours_are_local_on_both_databases(any_db_url: str, berlin: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fill(any_db_url)
    code, out, err = run(["sql", "SELECT hour_local, hour_utc FROM peer_timeline WHERE is_drop = 1"
                          " ORDER BY global_position", "--db", any_db_url, "--json"], capsys)
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"hour_local": "2026-11-25 11:00", "hour_utc": "2026-11-25 10:00"}] * 3 + [
        {"hour_local": "2026-11-26 07:00", "hour_utc": "2026-11-26 06:00"}]


def test_help_lists_every_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with open_store(url) as opened:
        views = list_views(opened.reader_engine, "sqlite", opened.where)
    assert {"peer_timeline", "connection_history", "path_events", "peer_metrics", "endpoint_changes",
            "node_stops", "peer_names"} <= set(views)
    code, out, _ = run(["sql", "--help"], capsys)
    assert code == 0
    assert [view for view in views if view not in out] == []
