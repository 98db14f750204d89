"""``python cli.py relay-server``: bad input, and a real run that records its events in SQLite."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from lab.ports import free_port
from mesh.relay import ProxyRelayClient, issue_tickets, probe_relay

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})



def test_bad_input_is_one_line_and_non_zero(tmp_path: Path) -> None:
    for args, message in ((["--listen", "nowhere"], "--listen must be HOST:PORT"),
                          (["--listen", "127.0.0.1:0", "--secret-file", str(tmp_path / "missing")],
                           "No such file"),
                          (["--listen", "127.0.0.1:0"], "no relay secret")):
        result = cli("relay-server", *args, "--state-dir", str(tmp_path),
                     env={"LANRAGE_RELAY_SECRET": ""})
        assert result.returncode == 2, result
        assert message in result.stderr and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_relay_server_forwards_and_records_events(tmp_path: Path) -> None:
    secret = os.urandom(32)
    (tmp_path / "secret").write_text(secret.hex())
    os.chmod(tmp_path / "secret", 0o600)
    port = free_port(socket.SOCK_DGRAM)
    db = tmp_path / "relay.db"
    process = subprocess.Popen(
        [sys.executable, "cli.py", "relay-server", "--listen", f"127.0.0.1:{port}", "--secret-file",
         str(tmp_path / "secret"), "--db", f"sqlite:///{db}", "--sample-interval", "0.5",
         "--state-dir", str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while probe_relay(f"127.0.0.1:{port}", 0.2) is None:
            if process.poll() is not None or time.monotonic() >= deadline:
                process.kill()
                raise AssertionError(f"relay-server did not start (exit {process.poll()}): "
                                     f"{process.communicate(timeout=5)[1]}")
        first, second = issue_tickets(secret, f"127.0.0.1:{port}", "party9", "alice", "bob")
        wg_a, wg_b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for sock in (wg_a, wg_b):
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2)
        client_a = ProxyRelayClient(lambda *_: first, wg_port=wg_a.getsockname()[1])
        client_b = ProxyRelayClient(lambda *_: second, wg_port=wg_b.getsockname()[1])
        try:
            alloc_a = client_a.allocate("party9", "bob", first.relay)
            client_b.allocate("party9", "alice", second.relay)
            host, target = alloc_a.endpoint.split(":")
            packet = b"\x04\0\0\0" + b"z" * 60
            wg_a.sendto(packet, (host, int(target)))
            assert wg_b.recv(2048) == packet
            time.sleep(1.0)
        finally:
            client_a.close()
            client_b.close()
            wg_a.close()
            wg_b.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    rows = sqlite3.connect(db).execute(
        "SELECT stream_id, event_type, payload FROM events ORDER BY global_position").fetchall()
    types = [row[1] for row in rows]
    assert {row[0] for row in rows} == {f"relay-server:127.0.0.1:{port}"}
    assert types[0] == "RelayServerStarted" and types[-1] == "RelayServerStopped"
    assert "RelaySessionAllocated" in types and "RelayCountersSampled" in types
    assert '"party9"' in next(row[2] for row in rows if row[1] == "RelaySessionAllocated")
    assert all(first.key_hex not in row[2] and second.key_hex not in row[2] for row in rows)
