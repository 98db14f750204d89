"""``relay-server``: the UDP relay for peers that cannot reach each other directly."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from commands.common import DbOption, StateDirOption, UsageError, database_url


def _hostport(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{option} must be HOST:PORT, not {value!r}")
    return host, int(port)


def register(app: typer.Typer) -> None:
    @app.command("relay-server")
    def relay_server(
        listen: Annotated[str, typer.Option("--listen", help="UDP address to listen on.")] = "0.0.0.0:3478",
        public: Annotated[str | None, typer.Option(
            "--public", help="HOST:PORT peers use to reach this relay; names its event stream "
                             "relay-server:<HOST:PORT> [default: --listen].")] = None,
        secret_file: Annotated[Path | None, typer.Option(
            "--secret-file", help="File holding the secret shared with the control server (hex or raw, "
                                  ">= 16 bytes); or set LANRAGE_RELAY_SECRET.")] = None,
        session_pps: Annotated[float, typer.Option("--session-pps", help="Rate limit per session.")] = 20_000,
        idle_timeout: Annotated[float, typer.Option("--idle-timeout", help="Seconds before an idle session "
                                                                          "expires.")] = 120.0,
        sample_interval: Annotated[float, typer.Option("--sample-interval", help="Seconds between counter "
                                                                                 "samples.")] = 10.0,
        state_dir: StateDirOption = Path("~/.lanrage"),
        db: DbOption = None,
    ) -> None:
        """Run the relay: forward WireGuard packets between the two authenticated peers of each session."""
        from mesh.relay.server import RelayConfig, RelayServer, load_secret

        host, port = _hostport(listen, "--listen")
        name = public
        if public is not None:
            _hostport(public, "--public")
        if session_pps <= 0 or idle_timeout <= 0 or sample_interval <= 0:
            raise UsageError("--session-pps, --idle-timeout and --sample-interval must be positive")
        try:
            secret = load_secret(str(secret_file) if secret_file else None)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
        from store import open_store

        store = open_store(database_url(db, state_dir))
        config = RelayConfig(session_pps=session_pps, session_burst=max(2_000.0, session_pps / 10),
                             idle_timeout_s=idle_timeout, sample_interval_s=sample_interval)
        try:
            server = RelayServer(secret, (host, port), name=name, recorder=store, config=config)
        except OSError as error:
            store.close()
            raise UsageError(f"cannot listen on {listen}: {error.strerror or error}") from None
        stopped = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        server.start()
        print(f"relay {server.name} listening on {server.address[0]}:{server.address[1]}", file=sys.stderr,
              flush=True)
        try:
            while not stopped.wait(0.5):
                pass
        finally:
            server.stop("signal")
            store.close()
