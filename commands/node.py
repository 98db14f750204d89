"""``serve``, ``control-server``, ``party create|join|leave|export`` and ``status``.

``serve`` and ``control-server`` are long-running services; the other commands talk
to the local agent's HTTP API with the token ``serve`` wrote to the state directory.
Every option of the two services can also be set in a TOML file (``--config``, or
``<state-dir>/lanrage.toml``): see docs/service.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from commands.common import (
    DEFAULT_STATE_DIR,
    DbOption,
    JsonOption,
    StateDirOption,
    UsageError,
    database_url,
    state_dir,
)
from mesh.text import shown

if TYPE_CHECKING:
    import click


ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="TOML file with any of these options [default: <state-dir>/lanrage.toml if present].",
    envvar="LANRAGE_CONFIG")]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]
LogFormatOption = Annotated[str, typer.Option("--log-format", help="human or json.")]
ApiOption = Annotated[str | None, typer.Option(
    "--api", help="HOST:PORT of the local agent's API [default: api-listen of the serve table in the "
                  "config file, else 127.0.0.1:8666].", envvar="LANRAGE_API")]


def hostport(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{option} must be HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def _settings(ctx: click.Context, config: Path | None, section: str) -> dict[str, Any]:
    from commands.config import apply_file, find_config

    values = dict(ctx.params)
    path = find_config(config, Path(values.get("state_dir_") or DEFAULT_STATE_DIR))
    return _as_paths(ctx, apply_file(ctx, values, path, section))


def _as_paths(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Values of ``Path`` parameters as ``Path``: click's context (and the file) hold them as text."""
    import inspect
    import typing

    function = inspect.unwrap(ctx.command.callback) if ctx.command.callback else None
    hints = typing.get_type_hints(function) if function else {}
    for name, value in values.items():
        hint = hints.get(name)
        if isinstance(value, str) and hint is not None and Path in (typing.get_args(hint) or (hint,)):
            values[name] = Path(value)
    return values


def _logging(level: str, fmt: str, file: Path | None = None) -> None:
    from agent.logs import FORMATS, LEVELS, configure

    if level.upper() not in LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise UsageError(f"--log-format must be human or json, not {fmt!r}")
    configure(level.upper(), fmt, file)


# ---------------------------------------------------------------- services


NAME_LOOKUP_S = 3.0  # a control host name that does not resolve in this long is left to the agent's retries


def check_control_url(url: str) -> None:
    """``--control``'s URL is one a node can dial: its form, its pins and its host name."""
    if url.startswith("file://"):
        return
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"--control must start with ws://, wss:// or file://, not {url[:80]!r}")
    import ipaddress

    from mesh.control.target import ControlTarget, TargetError

    try:
        target = ControlTarget.parse(url)
    except TargetError as error:
        raise UsageError(f"--control: {error}") from None
    host = target.authority.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        _check_host_name(target.url, host)
        _look_up(target.url, host)
    if target.fingerprint:
        _check_fingerprint(target.url, host, int(target.authority.rpartition(":")[2]), target.fingerprint)


PLACEHOLDER_HOST = "host"  # what the control server prints for its address when it listens on all
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _check_host_name(url: str, host: str) -> None:
    """A placeholder or a name no DNS name can be is refused as it is, without asking a resolver."""
    if host == PLACEHOLDER_HOST:
        raise UsageError(f"--control {url}: HOST is a placeholder (the control server prints it when it "
                         "listens on every address): put the control server's address or name there")
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise UsageError(f"--control {url}: {host!r} is not a host name or an IP address")


def _look_up(url: str, host: str) -> None:
    """A host name that the resolver says does not exist (a placeholder such as HOST, a typo)."""
    import concurrent.futures
    import socket

    pool = concurrent.futures.ThreadPoolExecutor(1)
    lookup = pool.submit(socket.getaddrinfo, host, None)
    try:
        lookup.result(NAME_LOOKUP_S)
    except socket.gaierror as error:
        if error.errno == socket.EAI_NONAME:  # a definite answer (a placeholder such as HOST, a typo)
            raise UsageError(f"--control {url}: no such host ({error.strerror}); give the control "
                             "server's address or name") from None
        # No resolver answered (no network yet at boot): the agent keeps dialing.
    except concurrent.futures.TimeoutError:
        pass  # no answer from the resolver yet: the agent keeps dialing
    finally:
        pool.shutdown(wait=False)


FINGERPRINT_CHECK_S = 2.0  # a server that does not answer this soon is left to the agent's retries


def _check_fingerprint(url: str, host: str, port: int, pinned: str) -> None:
    """The certificate the server presents is the one ``fp=`` pins (only when it answers now)."""
    import socket
    import ssl

    from mesh.control.target import fingerprint_of

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the pin is the check
    try:
        with socket.create_connection((host, port), timeout=FINGERPRINT_CHECK_S) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return  # not reachable now: the agent keeps dialing, and says why in its log
    seen = fingerprint_of(der) if der else ""
    if seen != pinned:
        raise UsageError(f"--control {url}: the server presents the certificate {seen[:12] or 'none'}…, not "
                         f"the one fp= pins ({pinned[:12]}…): check the fingerprint for a typo, or whether "
                         "the server has a new certificate")


def _broadcast_ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(sorted({int(p) for p in text.replace(" ", "").split(",") if p}))
    except ValueError:
        raise UsageError(f"--broadcast-ports must be comma-separated port numbers, not {text!r}") from None
    if len(ports) > 64 or any(not 0 < p < 65536 or p == 8668 for p in ports):
        raise UsageError("--broadcast-ports: at most 64 ports, each 1-65535 and not 8668 (the tunnel port)")
    return ports


def serve_command(
    ctx: typer.Context,
    api_listen: Annotated[str, typer.Option("--api-listen", help="Where the HTTP API listens (keep it on "
                                                                 "loopback).")] = "127.0.0.1:8666",
    control: Annotated[str | None, typer.Option(
        "--control", help="Control server for `party create` (a `party join` dials the one its invite "
                          "names): ws://HOST:8667, or wss://HOST:8667 with TLS; as the server prints it, "
                          "with ?key=SERVER_KEY (and &fp=CERT_SHA256 for a self-signed certificate) to pin "
                          "it; or file:///dir for file discovery.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="This node's name in parties [default: "
                                                            "hostname].")] = None,
    relay: Annotated[list[str] | None, typer.Option("--relay", help="Relay HOST:PORT to monitor "
                                                                    "(repeatable).")] = None,
    stun: Annotated[list[str] | None, typer.Option("--stun", help="STUN server HOST:PORT "
                                                                  "(repeatable).")] = None,
    interface: Annotated[str, typer.Option("--interface", help="WireGuard interface name.")] = "lanrage0",
    listen_port: Annotated[int, typer.Option("--listen-port", help="WireGuard UDP port.")] = 51820,
    mesh_range: Annotated[str, typer.Option(
        "--mesh-range", help="Private IPv4 range every party subnet must lie inside; a server "
                             "offering another is refused.")] = "10.66.0.0/16",
    adapters: Annotated[str, typer.Option("--adapters", help="real (WireGuard, needs root) or sim "
                                                             "(simulated network, for trials).")] = "real",
    punch_timeout: Annotated[float, typer.Option(
        "--punch-timeout", help="Seconds a hole punch may take before the relay is used (a working "
                                "punch answers in tens of ms; direct is retried every 30 s).")] = 1.5,
    probe_interval: Annotated[float, typer.Option(
        "--probe-interval", help="Seconds between tunnel probes of each peer: latency and loss figures "
                                 "(degraded at 60 % loss over the last 20 probes). A dead path is found "
                                 "sooner, from WireGuard's counters (nothing received while sending) and a "
                                 "check of up to 33 probes at once: then it fails over to the relay, or "
                                 "reconnects.")] = 5.0,
    direct_retry: Annotated[float, typer.Option(
        "--direct-retry", help="While a peer is relayed, retry the direct path this often "
                               "(seconds).")] = 30.0,
    log_level: LogLevelOption = "INFO",
    log_format: LogFormatOption = "human",
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Log here instead of "
                                                                     "stderr.")] = None,
    broadcast_ports: Annotated[str, typer.Option(
        "--broadcast-ports", help="Game discovery UDP ports whose LAN broadcasts are carried to the "
                                  "party, e.g. 4445,27015 (docs/broadcast.md) [default: off].")] = "",
    user: Annotated[str, typer.Option(
        "--user", help="Started as root, serve sets up, then runs as this unprivileged user with only "
                       "CAP_NET_ADMIN and CAP_NET_RAW (created if missing).")] = "lanrage",
    broadcast_groups: Annotated[str, typer.Option(
        "--broadcast-groups", help="Multicast GROUP:PORT pairs carried to the party, e.g. "
                                   "239.255.255.250:1900,224.0.0.251:5353 [default: off].")] = "",
    games: Annotated[str, typer.Option(
        "--games", help="Discovery presets by name: minecraft, terraria, source, blizzard, directplay, "
                        "ssdp, mdns, or all (docs/broadcast.md) [default: off].")] = "",
    state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the node agent: actors, control sessions, WireGuard, and the local API on 127.0.0.1:8666."""
    s = _settings(ctx, config, "serve")
    host, port = hostport(s["api_listen"], "--api-listen")
    if not 0 < s["listen_port"] < 65536:
        raise UsageError("--listen-port must be 1-65535")
    factories = {"real": "agent.adapters:real", "sim": "mesh.sim:adapters"}
    if s["adapters"] not in factories:
        raise UsageError("--adapters must be real or sim")
    if s["control"]:
        check_control_url(s["control"])
    from mesh.wireguard.config import validate_interface_name
    from mesh.wireguard.errors import WireGuardError

    try:
        validate_interface_name(s["interface"])
    except WireGuardError as error:
        raise UsageError(str(error)) from None
    if not 0.1 <= s["punch_timeout"] <= 60:
        raise UsageError("--punch-timeout must be 0.1-60 seconds")
    if not 0.2 <= s["probe_interval"] <= 3600:
        raise UsageError("--probe-interval must be 0.2-3600 seconds")
    if not 0.5 <= s["direct_retry"] <= 86400:
        raise UsageError("--direct-retry must be 0.5-86400 seconds")
    for value in [*(s["relay"] or []), *(s["stun"] or [])]:
        hostport(value, "--relay/--stun")
    state = state_dir(s["state_dir_"])
    from agent.instance import AgentAlreadyRunning, hold_state_dir

    try:
        lock = hold_state_dir(state)  # before anything in the state directory is touched
    except AgentAlreadyRunning as error:
        raise UsageError(str(error)) from None
    from mesh.control.accept import UntrustedParty, check_mesh_range

    try:
        check_mesh_range(s["mesh_range"])
    except UntrustedParty as error:
        raise UsageError(f"--mesh-range: {error}") from None
    _logging(s["log_level"], s["log_format"], s["log_file"])
    from actors.config import ActorConfig, ConnectionConfig
    from agent.node import Agent, AgentConfig

    settings: dict[str, Any] = {
        "state_dir": state, "db_url": database_url(s["db"], state), "api_host": host, "api_port": port,
        "control": s["control"], "adapters": factories[s["adapters"]], "relays": tuple(s["relay"] or ()),
        "stun": tuple(s["stun"] or ()), "interface": s["interface"], "listen_port": s["listen_port"],
        "log_level": s["log_level"].upper(),
        "log_file": s["log_file"],
        "actor_config": ActorConfig(connection=ConnectionConfig(
            punch_timeout_s=s["punch_timeout"], probe_interval_s=s["probe_interval"],
            direct_retry_s=s["direct_retry"]), mesh_range=s["mesh_range"])}
    if s["name"]:
        settings["name"] = s["name"]
    from commands.discovery import discovery

    settings["broadcast_ports"], settings["broadcast_groups"] = discovery(
        _broadcast_ports(str(s["broadcast_ports"] or "")), str(s["broadcast_groups"] or ""),
        str(s["games"] or ""))
    from agent.privileges import PrivilegeError, drop_for_serve
    from mesh.interfaces import MeshError

    try:
        drop_for_serve(s["user"], state, [s["log_file"]] if s["log_file"] else [])
    except (PrivilegeError, OSError) as error:
        raise UsageError(f"cannot drop root privileges: {error}") from None
    from store.base import StoreError

    try:
        agent = Agent(AgentConfig(**settings))
        status = agent.run()
    except (MeshError, OSError, StoreError) as error:
        raise UsageError(str(error)) from None
    finally:
        os.close(lock)
    raise typer.Exit(status)


def control_server_command(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option("--listen", help="WebSocket address.")] = "0.0.0.0:8667",
    server_id: Annotated[str, typer.Option("--server-id", help="Names the event stream "
                                                               "control:<id>.")] = "default",
    relay: Annotated[list[str] | None, typer.Option("--relay", help="Relay HOST:PORT offered to nodes "
                                                                    "(repeatable).")] = None,
    relay_secret_file: Annotated[Path | None, typer.Option(
        "--relay-secret-file", help="Secret shared with the relays (as for relay-server --secret-file); or "
                                    "set LANRAGE_RELAY_SECRET.")] = None,
    heartbeat: Annotated[float, typer.Option("--heartbeat", help="Seconds between node heartbeats.")] = 10.0,
    ttl: Annotated[float, typer.Option("--ttl", help="Seconds without a heartbeat before a node is "
                                                     "offline.")] = 30.0,
    member_expiry: Annotated[float, typer.Option("--member-expiry", help="Seconds offline before a member "
                                                                         "is removed.")] = 86400.0,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="PEM certificate: serve wss:// (invites pin its fingerprint).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    tls_self_signed: Annotated[bool, typer.Option(
        "--tls-self-signed", help="Serve wss:// with a self-signed certificate kept in the state directory "
                                  "(invites pin it; no CA needed).")] = False,
    public_url: Annotated[list[str] | None, typer.Option(
        "--public-url", help="ws(s)://HOST:PORT nodes dial when that is not this host's own address and "
                             "port (a DNS name, a port forward); logins made for any other are refused "
                             "(repeatable).")] = None,
    log_level: LogLevelOption = "INFO",
    log_format: LogFormatOption = "human",
    state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the control server: party registry and signalling over WebSocket (port 8667)."""
    import asyncio
    import signal

    s = _settings(ctx, config, "control-server")
    host, port = hostport(s["listen"], "--listen")
    for value in s["relay"] or []:
        hostport(value, "--relay")
    if min(s["heartbeat"], s["ttl"], s["member_expiry"]) <= 0 or s["ttl"] <= s["heartbeat"]:
        raise UsageError("--heartbeat, --ttl and --member-expiry must be positive, and --ttl > --heartbeat")
    if not s["server_id"].replace("-", "").replace("_", "").isalnum():
        raise UsageError("--server-id may hold letters, digits, - and _ only")
    _logging(s["log_level"], s["log_format"])
    relay_key = None
    if s["relay"]:
        from mesh.relay.server import load_secret

        try:
            relay_key = load_secret(str(s["relay_secret_file"]) if s["relay_secret_file"] else None,
                                    option="--relay-secret-file")
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
    from mesh.control import ControlServer, ServerConfig
    from mesh.control.identity import Identity
    from mesh.control.target import ControlTarget, TargetError, self_signed, server_tls
    from mesh.keys import KeyFileError, load_or_create_private_key
    from store import open_store

    directory = state_dir(s["state_dir_"])
    for url in s["public_url"] or []:
        try:
            ControlTarget.parse(url)
        except TargetError as error:
            raise UsageError(f"--public-url: {error}") from None
    try:
        identity = Identity.from_private_key(
            load_or_create_private_key(directory / "control.key").secret_base64())
    except KeyFileError as error:
        raise UsageError(str(error)) from None
    tls, fingerprint = None, ""
    cert, key = s["tls_cert"], s["tls_key"]
    if s["tls_self_signed"] and cert is None:
        cert, key = directory / "control-cert.pem", directory / "control-cert.key"
        if not cert.exists() or not key.exists():
            self_signed(cert, key, [host] if host not in ("0.0.0.0", "") else ["localhost"])
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is not None and key is not None:
        for option, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not path.is_file():
                raise UsageError(f"{option} {path}: no such file")
        try:
            tls, fingerprint = server_tls(cert, key)
        except TargetError as error:
            raise UsageError(f"--tls-cert/--tls-key: {error}") from None
    store = open_store(database_url(s["db"], directory))
    server = ControlServer(store, ServerConfig(
        server_id=s["server_id"], heartbeat_s=s["heartbeat"], ttl_s=s["ttl"],
        member_expiry_s=s["member_expiry"], relays=tuple(s["relay"] or ()), relay_key=relay_key,
        identity=identity, tls=tls, fingerprint=fingerprint, public_urls=tuple(s["public_url"] or ())))

    async def run() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        try:
            bound = await server.start(host, port)
        except OSError as error:
            raise UsageError(f"cannot listen on {s['listen']}: {error.strerror or error}") from None
        scheme = "wss" if tls is not None else "ws"
        print(f"control server listening on {scheme}://{host}:{bound}", file=sys.stderr, flush=True)
        shown = host if host not in ("0.0.0.0", "") else "HOST"
        print(f"nodes use: --control '{server.url(shown)}'", file=sys.stderr, flush=True)
        if tls is None:
            print("WARNING: no TLS: party secrets and relay ticket keys cross the network in clear, "
                  "and frames after login are not authenticated; beyond a LAN use --tls-self-signed "
                  "(or --tls-cert/--tls-key): nodes then dial wss:// with the certificate pinned",
                  file=sys.stderr, flush=True)
        await stopped.wait()
        await server.stop()

    try:
        asyncio.run(run())
    finally:
        store.close()


# ---------------------------------------------------------------- clients of the local API


API_TIMEOUT_S = 30.0  # party join waits for the control server's answer; status answers at once


def _api(api: str | None, state: Path, config: Path | None) -> str:
    if api is None:
        from commands.config import find_config, load_table

        path = find_config(config, state)
        api = str(load_table(path, "serve").get("api_listen", "")) if path else ""
        api = api or "127.0.0.1:8666"
    host, port = hostport(api, "--api")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def _call(method: str, path: str, api: str | None, state: Path, config: Path | None,
          body: dict[str, Any] | None = None) -> Any:
    from commands.local_api import LocalApiError, request

    if config is not None and state == DEFAULT_STATE_DIR:
        # The agent's state directory as its config file names it (the API token is there).
        from commands.config import find_config, load_table

        found = find_config(config, state)
        state = Path(str(load_table(found, "serve").get("state_dir") or state)) if found else state
    base = _api(api, state.expanduser(), config)
    host, port = hostport(base.removeprefix("http://"), "--api")
    headers = {"Content-Type": "application/json"}
    from api.token import TokenError, read_token

    try:  # every route that tells anything about peers needs it, reads included
        headers["Authorization"] = f"Bearer {read_token(state.expanduser())}"
    except TokenError as error:
        if method == "POST":
            raise UsageError(str(error)) from None  # (a read without it: the agent says 401, or is not there)
    data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
    try:
        status, text = request(host, port, method, path, headers, data, API_TIMEOUT_S)
    except LocalApiError as error:
        raise UsageError(f"no agent running at {base} ({error}): start one with `lanrage serve`") from None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if status >= 400:
        detail = (document.get("detail") if isinstance(document, dict)
                  else text[:200].decode("utf-8", "replace"))
        if isinstance(detail, list):  # a validation error: name the first field
            first = detail[0] if detail else {}
            detail = f"{'.'.join(map(str, first.get('loc', [])[1:]))}: {first.get('msg')}"
        raise UsageError(f"{detail} (HTTP {status})")
    if document is None:
        raise UsageError(f"the agent at {base} answered {path} with something that is not JSON")
    return document


def party_create(
    name: Annotated[str, typer.Argument(help="The party's name, shown to every member.")],
    json_: JsonOption = False, api: ApiOption = None, state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    config: ConfigOption = None,
) -> None:
    """Create a party through the local agent and print its invite (one string to send to friends)."""
    created = _call("POST", "/party/create", api, state_dir_, config, {"name": name})
    if json_:
        print(json.dumps(created))
        return
    print(f"party {shown(created['name'])} ({created['party_id']}) created; you are {created['virtual_ip']}.",
          file=sys.stderr)
    print("send this invite to your friends (`lanrage party join INVITE`):", file=sys.stderr)
    print(created["invite"])


def party_join(
    invite: Annotated[str, typer.Argument(help="The invite string from `party create`.")],
    json_: JsonOption = False, api: ApiOption = None, state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    config: ConfigOption = None,
) -> None:
    """Join a party with its invite."""
    joined = _call("POST", "/party/join", api, state_dir_, config, {"invite": invite})
    if json_:
        print(json.dumps(joined))
        return
    print(f"joined party {shown(joined['name'])} ({shown(joined['party_id'])}); you are "
          f"{shown(joined['virtual_ip'])}.")


def party_leave(
    party_id: Annotated[str | None, typer.Argument(help="The party to leave [default: the only "
                                                        "one].")] = None,
    json_: JsonOption = False, api: ApiOption = None, state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    config: ConfigOption = None,
) -> None:
    """Leave a party: its tunnels come down and every other member is told."""
    left = _call("POST", "/party/leave", api, state_dir_, config, {"party_id": party_id} if party_id else {})
    if json_:
        print(json.dumps(left))
        return
    print(f"left party {left['party_id']}.")


def party_export(
    name: Annotated[str, typer.Argument(help="The device's name in the party, e.g. switch.")],
    party: Annotated[str | None, typer.Option("--party", help="The party [default: the only one].")] = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="IP:PORT where the device reaches this node: a LAN address, or a public one "
                           "with a port forward [default: this node's public address as STUN saw it]."
    )] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the config to this file (mode 0600) [default: print it].")] = None,
    json_: JsonOption = False, api: ApiOption = None, state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    config: ConfigOption = None,
) -> None:
    """A device without LANrage (console, phone, old PC) joins through this node: its wg-quick config.

    The device dials this node, which forwards between it and the other members. The config
    holds the device's private key, which is kept nowhere else: export again under a new
    name if it is lost.
    """
    body: dict[str, Any] = {"name": name}
    if party is not None:
        body["party_id"] = party
    if endpoint is not None:
        body["endpoint"] = endpoint
    if output is not None:
        import os

        # Checked before asking: a file that cannot be written must not cost an exported device.
        if output.is_dir() or not os.access(output.parent if str(output.parent) else Path("."), os.W_OK):
            raise UsageError(f"cannot write {output}: not a writable file path")
    exported = _call("POST", "/party/export", api, state_dir_, config, body)
    if output is not None:
        try:
            descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(exported["config"])
        except OSError as error:
            raise UsageError(f"cannot write {output}: {error.strerror}; the device "
                             f"{exported['name']} is exported: export again under another name") from None
    if json_:
        print(json.dumps({k: v for k, v in exported.items() if k != "config" or output is None}))
        return
    print(f"device {exported['name']} is {exported['virtual_ip']} in party {exported['party_id']}, through "
          f"this node; it must reach {exported['endpoint']} (UDP).", file=sys.stderr)
    if output is None:
        print(exported["config"], end="")
    else:
        print(f"wrote its config to {output} (it holds the device's private key); on the device: "
              f"`wg-quick up {output}` or import it in a WireGuard app.", file=sys.stderr)


def dashboard_command(
    api: ApiOption = None, state_dir_: StateDirOption = DEFAULT_STATE_DIR, config: ConfigOption = None,
) -> None:
    """Print a one-time URL that opens this node's dashboard in a browser (valid for a minute)."""
    opened = _call("POST", "/dashboard/code", api, state_dir_, config)
    print(f"{_api(api, state_dir_.expanduser(), config)}{opened['path']}")
    print(f"open it within {opened['expires_in_s']} s; it works once", file=sys.stderr)


def status_command(
    json_: JsonOption = False, api: ApiOption = None, state_dir_: StateDirOption = DEFAULT_STATE_DIR,
    config: ConfigOption = None,
) -> None:
    """Parties, peers, virtual IPs, connection state, path (direct or relay) and latency."""
    status = _call("GET", "/status", api, state_dir_, config)
    if json_:
        print(json.dumps(status, indent=2))
        return
    print_status(status)


def print_status(status: dict[str, Any]) -> None:
    from commands.table import render

    node = status.get("node") or {}
    agent = status.get("agent") or {}
    controls = ", ".join(f"{c['url']} ({'connected' if c['connected'] else 'unreachable'})"
                         for c in agent.get("control", [])) or "none"
    nat = agent.get("nat_type") or node.get("nat_type") or "unknown"
    print(shown(f"node {agent.get('name', '')} {node.get('node_id', '')}  NAT {nat}"
                f"  relay {node.get('relay') or '-'}  control {controls}"))
    print_discovery(agent.get("broadcast"))
    if not status["parties"]:
        print("no party: `lanrage party create NAME` or `lanrage party join INVITE`")
    for party in status["parties"]:
        rows = []
        for peer in party["peers"]:
            local = peer["is_local"]
            latency = f"{peer['latency_ms']:.1f} ms" if peer["latency_ms"] is not None else "-"
            loss = f"{100 * peer['loss']:.0f} %" if peer["loss"] is not None else "-"
            where = peer["relay"] if peer["path"] == "relay" else peer["endpoint"]
            rows.append((peer["name"] + (" (you)" if local else ""), peer["virtual_ip"], peer["nat_type"],
                         "" if local else peer["state"], peer["path"], where,
                         "" if local else latency, "" if local else loss))
        print()
        headers = ("peer", "virtual IP", "NAT", "state", "path", "endpoint / relay", "latency", "loss")
        print(render(headers, rows, title=f"party {party['name']} ({party['party_id']}), "
                                            f"you are {party['virtual_ip']}"))
        for problem in _problems(party):
            print(shown(problem))
        if party.get("devices"):
            print()
            print(render(("device", "virtual IP", "state", "via", "endpoint", "last handshake"),
                         [_device_row(device) for device in party["devices"]],
                         title="devices without LANrage (static WireGuard peers)"))


def _problems(party: dict[str, Any]) -> list[str]:
    """What keeps the party from working, as the log recorded it: the node's own address, then
    each peer whose WireGuard change failed."""
    problems = []
    if party.get("interface_error"):
        problems.append(f"error: this node does not hold {party['virtual_ip']} on a working interface: "
                        f"{party['interface_error']}")
    problems += [f"error: WireGuard did not take the change for {peer['name'] or peer['peer_id']}: "
                 f"{peer['wireguard_error']}"
                 for peer in party["peers"] if not peer["is_local"] and peer.get("wireguard_error")]
    return problems


def _device_row(device: dict[str, Any]) -> tuple[Any, ...]:
    import time

    via = "this node" if device["routed_here"] else (device["via_name"] or device["via_peer_id"])
    handshake = device["last_handshake"]
    ago = f"{max(0, time.time() - handshake):.0f} s ago" if handshake else ("never" if device["routed_here"]
                                                                            else "-")
    state = f"static, {device['state'] or 'pending'}" + (f" ({device['error']})" if device["error"] else "")
    return (device["name"], device["virtual_ip"], state, via, device["endpoint"] or "", ago)


def print_discovery(broadcast: dict[str, Any] | None) -> None:
    """The game discovery line, and per-port counters since the agent started."""
    from commands.table import render

    if not broadcast:
        return
    carried = ", ".join([*(str(port) for port in broadcast["ports"]), *broadcast["groups"]])
    print(f"game discovery: {carried} ({'running' if broadcast['running'] else 'waiting for a party'})")
    if broadcast["by_port"]:
        columns = ("captured", "forwarded", "received", "reemitted", "dropped")
        rows = [(row["destination"], row["port"], *(row[name] for name in columns))
                for row in broadcast["by_port"]]
        print(render(("destination", "port", *columns), rows))


def register(app: typer.Typer) -> None:
    app.command("serve", context_settings={"auto_envvar_prefix": None})(serve_command)
    app.command("control-server")(control_server_command)
    party_app = typer.Typer(help="Create, join or leave a party, or export a device without LANrage "
                                 "(through the local agent).",
                            no_args_is_help=True)
    party_app.command("create")(party_create)
    party_app.command("join")(party_join)
    party_app.command("leave")(party_leave)
    party_app.command("export")(party_export)
    app.add_typer(party_app, name="party")
    app.command("status")(status_command)
    app.command("dashboard")(dashboard_command)
