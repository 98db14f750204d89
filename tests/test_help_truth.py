"""Help and docs that tell the truth: what they say about options, defaults, views and
files is compared with the command tree itself, and with a fresh database."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main

import cli

ROOT = Path(__file__).resolve().parent.parent


def commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, prefix: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*prefix, name))
        else:
            found[" ".join(prefix)] = command

    walk(typer.main.get_command(cli.build_app(None)), ())
    return found


def options(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: param for param in command.params for opt in getattr(param, "opts", [])
            if opt.startswith("--")}


def test_the_readme_names_every_command_that_takes_db() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    sentence = readme[readme.index("Every command that reads or writes the event store takes `--db URL`"):]
    sentence = sentence[:sentence.index(";")]
    named = set(re.findall(r"`([a-z-]+)(?: …)?`", sentence))
    takes_db = {name.split()[0] for name, command in commands().items() if "--db" in options(command)}
    assert named == takes_db
    without = {name.split()[0] for name, command in commands().items() if "--db" not in options(command)}
    assert without == {"party", "status", "dashboard", "lab"}


def test_sql_help_lists_every_view_of_a_fresh_database(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "db", "upgrade", "--state-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "lanrage.db") as db:
        views = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'"))
    assert "peer_timeline" in views and "peer_metrics" in views
    helped = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sql", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT).stdout
    listed = set(re.findall(r"[a-z]+(?:_[a-z]+)+", " ".join(helped.split())))
    assert set(views) <= listed, sorted(set(views) - listed)


def test_the_service_docs_toml_example_holds_only_real_options_and_a_tls_control_url() -> None:
    text = (ROOT / "docs" / "service.md").read_text()
    example = text[text.index("```toml") + len("```toml"):]
    document = tomllib.loads(example[:example.index("```")])
    tree = commands()
    for section, table in document.items():
        known = options(tree[section])
        for key in table:
            assert f"--{key}" in known, f"[{section}] {key} is no option of {section}"
    assert document["serve"]["control"].startswith("wss://")


def test_the_control_server_defaults_in_the_docs_are_the_real_ones() -> None:
    text = (ROOT / "docs" / "service.md").read_text()
    section = text[text.index("## `control-server`"):]
    section = " ".join(section[:section.index("\n## ")].split())
    stated = dict(re.findall(r"`(--[a-z-]+) ([0-9][0-9.:]*)`", section))
    assert set(stated) == {"--listen", "--heartbeat", "--ttl", "--member-expiry"}
    known = options(commands()["control-server"])
    for option, value in stated.items():
        default = known[option].default
        assert (float(value) == default) if isinstance(default, float) else (value == default), option


def test_serve_help_says_how_a_path_is_judged_and_what_control_takes() -> None:
    known = options(commands()["serve"])
    probe = " ".join(str(known["--probe-interval"].help).split())
    assert "3 lost in a row" not in probe and "33 probes" in probe and "last 20 probes" in probe
    control = " ".join(str(known["--control"].help).split())
    assert "wss://" in control and "key=" in control and "fp=" in control and "party join" in control


class _Agent(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"party_id": "p1", "virtual_ip": "10.66.0.2", "name": "LAN"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_party_join_with_a_config_file_uses_the_files_state_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Agent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state = tmp_path / "agent-state"
        state.mkdir(mode=0o700)
        (state / "api-token").write_text("token-of-that-agent\n")
        (state / "api-token").chmod(0o600)
        config = tmp_path / "lanrage.toml"
        config.write_text(f'[serve]\nstate-dir = "{state}"\napi-listen = "127.0.0.1:{server.server_port}"\n')
        monkeypatch.delenv("LANRAGE_STATE_DIR", raising=False)
        monkeypatch.delenv("LANRAGE_API", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no token in the default state directory
        assert cli.main(["party", "join", "lanrage1-x", "--config", str(config), "--json"]) == 0
    finally:
        server.shutdown()
    assert _Agent.seen == ["Bearer token-of-that-agent"]
    assert json.loads(capsys.readouterr().out)["virtual_ip"] == "10.66.0.2"
