"""The node agent: what ``serve`` runs.

One process: the actor runtime (thespian's one-process base on its own thread, with
the edge's I/O workers; no socket of the actor system exists), and one asyncio loop
for the control sessions (one per control plane its parties use), the HTTP API
(uvicorn) and the SIGTERM/SIGINT handling. The agent talks to the node actor only
through the runtime's inbox; the actors reach the network only through the edge.

Every call to a control plane is preceded by its recorded decision (``PartyRequested``)
and followed by its outcome (the party opened, or ``PartyRequestFailed``).

Both sides dial: every push of a joining member becomes a ``PeerAnnounced`` for the
node actor on *every* member, and each side's peer-connection actor configures
WireGuard and starts its own attempt. Existing tunnels do not depend on the control
server: when it is down the actors keep running and the session reconnects with
backoff, then reconciles membership from the fresh ``welcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn
from loguru import logger

from actors import messages as m
from actors.config import ActorConfig
from actors.runtime import ActorRuntime
from agent.accounts import is_recovery, read_own_side, read_restart_account
from agent.control import FileSession, Session, open_session
from api.app import create_app
from api.reader import StoreReader
from api.service import ServiceError
from api.token import write_token
from events import types as ev
from events.fold import NodeState, PartyState, apply_node, apply_party, fold_stream
from events.streams import PEER, node_prefix, node_stream, party_stream, peer_stream_ids
from mesh.control import ControlError, ControlUnavailable, Identity, Invite, InviteError
from mesh.control.accept import MAX_MEMBERS, UntrustedParty, check_disjoint, check_member, check_party
from mesh.control.protocol import MAX_ACCOUNT_ITEMS
from mesh.keys import load_or_create_private_key
from mesh.text import shown
from store import open_store
from store.migrate import migrate_apart

SOFT_TIMEOUT_S = 10.0
# The WireGuard port's public mapping is looked at again this often (one STUN binding from
# that port): a NAT rebinding or a router reboot is noticed within this even when no control
# session broke; a broken control session looks at once, before it announces again.
MAPPING_CHECK_S = 10.0
# How often the agent looks for connections that came back, to tell those peers this side's
# account (agent.accounts); an account the control server cannot take yet is kept this long.
ACCOUNT_POLL_S = 1.0
ACCOUNT_KEEP_S = 600.0
ACCOUNTS_WAITING = 32
# A relay ticket the control server pushed (the peer just asked for a session) is used only
# this soon after: it answers that request. An older one may name a session that was
# revoked since (the peer left and joined again) or that the pair moved away from.
OFFER_FRESH_S = 20.0
# Thespian's own logging (actors log through loguru): warnings and worse, to stderr.
THESPIAN_LOGS = {"version": 1, "disable_existing_loggers": False,
                 "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
                 "root": {"level": "WARNING", "handlers": ["stderr"]}}


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path
    db_url: str
    api_host: str = "127.0.0.1"
    api_port: int = 8666
    control: str | None = None
    name: str = field(default_factory=socket.gethostname)
    adapters: str = "agent.adapters:real"
    relays: tuple[str, ...] = ()
    stun: tuple[str, ...] = ()
    interface: str = "lanrage0"
    listen_port: int = 51820
    log_level: str = "INFO"
    log_file: Path | None = None
    actor_config: ActorConfig = field(default_factory=ActorConfig)
    broadcast_ports: tuple[int, ...] = ()  # game discovery ports for broadcast emulation (none: off)
    broadcast_groups: tuple[tuple[str, int], ...] = ()  # multicast group:port pairs, e.g. SSDP's


def agent_stream(node_id: str) -> str:
    return f"agent:{node_id}"


def node_id_of(state_dir: Path) -> str:
    path = state_dir / "node-id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12] + "\n")
        os.chmod(path, 0o600)
    return path.read_text().strip()


class _Server(uvicorn.Server):
    """uvicorn with a housekeeping tick of a second instead of its 0.1 s, and an exit at once.

    Its tick only refreshes the Date header (once a second anyway) and checks for exit;
    ten wakeups a second are most of an idle agent's own CPU.
    """

    TICK_S = 1.0

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit.set()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick does its per-second work when counter % 10 == 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), self.TICK_S)
            should_exit = await self.on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the agent owns SIGTERM/SIGINT: it must shut the actors down first


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.node_id = node_id_of(self.state_dir)
        key = load_or_create_private_key(self.state_dir / "wireguard.key")
        self.identity = Identity.from_private_key(key.secret_base64())
        self.private_key = key
        self.peer_id = self.identity.peer_id
        # The schema is brought up to date in a child process: alembic (~11 MB) never loads here.
        migrate_apart(config.db_url)
        self.store = open_store(config.db_url, metadata={"node_id": self.node_id, "actor": "agent"})
        self.bindings: dict[str, str] = {}  # party id -> control url
        self.sessions: dict[str, Session] = {}
        self._party_states: dict[str, tuple[int, PartyState]] = {}  # stream position, state
        # (party id, peer id) -> the relay ticket last pushed for that pair, with the monotonic
        # time it came: only the latest is the pair's session (an older one may be on a relay
        # this side has since found dead).
        self.offers: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.control_lost_at: dict[str, float] = {}  # control url -> monotonic time it went
        # (party id, peer id, relay) -> the pair's last ticket there (one per member and relay):
        # while the control server cannot be reached (an uplink just back, its session still
        # redialing), a relay fallback uses it rather than fail for want of a ticket.
        self.tickets: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.runtime = ActorRuntime(f"lanrage-{self.node_id}")
        self.node: Any = None
        self.interface: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.nat: Any = None  # NatInfo from STUN, detected once at start
        self.candidates: tuple[str, ...] = ()
        self.adapters: Any = None  # the real adapters (set by agent.adapters.adapter_spec)
        self._checking_mapping = False
        self._restore_bindings()

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, shut down cleanly; the exit status."""
        from actors import profiling
        from agent.adapters import interface_owner

        self.interface = interface_owner(self)
        profiling.start()  # only with LANRAGE_PROFILE set
        self.runtime.start(log_defs=THESPIAN_LOGS)
        try:
            return asyncio.run(self._main())
        finally:
            self.runtime.shutdown()  # the node actor records NodeStopped
            if self.interface is not None:
                self.interface.close()  # removes the WireGuard interface
            self.store.close()
            logger.info("node {} stopped", self.node_id)

    async def _start_node(self) -> None:
        from agent.adapters import adapter_spec

        await asyncio.to_thread(self._detect_nat)  # once: the edge hands this result to the actors
        start = m.StartNode(node_id=self.node_id, store=m.StoreSpec(self.config.db_url),
                            adapters=adapter_spec(self), relays=self.config.relays,
                            config=self.config.actor_config,
                            log=m.LogSpec(self.config.log_level,
                                          str(self.config.log_file) if self.config.log_file else None,
                                          program_sinks=True),
                            executor=self.runtime.name)
        self.node = await asyncio.to_thread(self.runtime.start_node, start)

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._stopping.set)
        await self._start_node()
        token = write_token(self.state_dir)
        reader = StoreReader(self.config.db_url)
        app = create_app(self, reader, token, listen_host=self.config.api_host)
        server = _Server(uvicorn.Config(app, host=self.config.api_host, port=self.config.api_port,
                                        log_config=None, access_log=False, lifespan="off"))
        for url in sorted(set(self.bindings.values())):
            await self._session(url, wait_s=0)
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            await reader.close()
            raise OSError(f"cannot listen on {self.config.api_host}:{self.config.api_port}")
        logger.info("node {} ({}) serving the API on http://{}:{}", self.node_id, self.peer_id,
                    self.config.api_host, self.config.api_port)
        broadcast = None
        if (self.config.broadcast_ports or self.config.broadcast_groups) \
                and self.config.adapters == "agent.adapters:real":
            from agent.broadcast import BroadcastWiring

            broadcast = self.broadcast = BroadcastWiring(self, self.config.broadcast_ports,
                                                         self.config.broadcast_groups)
            broadcast.start()
        upkeep = asyncio.create_task(self._upkeep_forever())
        mapping = asyncio.create_task(self._watch_mapping_forever())
        accounts = asyncio.create_task(self._tell_accounts_forever())
        await self._stopping.wait()
        upkeep.cancel()
        mapping.cancel()
        accounts.cancel()
        logger.info("node {} shutting down", self.node_id)
        if broadcast is not None:
            await broadcast.stop()
        server.request_exit()
        for session in list(self.sessions.values()):
            await session.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5)
        await reader.close()
        return 0

    async def _upkeep_forever(self) -> None:
        """Retention and snapshots of the log (``store.retention.upkeep``), once an interval."""
        from store.retention import UPKEEP_INTERVAL_S, upkeep

        while True:
            await asyncio.sleep(UPKEEP_INTERVAL_S)
            try:
                report = await asyncio.to_thread(upkeep, self.store)
            except Exception as error:  # the log stays as it is; the next interval tries again
                logger.warning("log upkeep failed: {}", error)
            else:
                logger.info("log upkeep: {}", report)

    async def _tell_accounts_forever(self) -> None:
        """Tell each peer this side's account when their connection comes back (agent.accounts)."""
        after = await asyncio.to_thread(self._run_started_at)
        waiting = await asyncio.to_thread(self._restart_told)
        while True:
            await asyncio.sleep(ACCOUNT_POLL_S)
            try:
                after, found = await asyncio.to_thread(self._recoveries, after)
                waiting = await self._send_accounts([*waiting, *found][-ACCOUNTS_WAITING:])
            except Exception as error:  # the next round tries again
                logger.warning("cannot tell a peer this side's account: {}", error)

    def _run_started_at(self) -> int:
        """The global position of this run's NodeStarted: its first connections are told of the restart."""
        stream = node_stream(self.node_id)
        head = self.store.stream_position(stream)
        starts = [r for r in self.store.read_stream(stream, max(1, head - 16))
                  if isinstance(r.event, ev.NodeStarted)]
        return starts[-1].global_position if starts else self.store.last_global_position()

    def _restart_told(self) -> list[tuple[float, str, str, list[dict[str, Any]]]]:
        """How this node's last run ended, for every member of every party it is in."""
        items = read_restart_account(self.store, self.node_id)
        if not items:
            return []
        return [(time.monotonic(), party_id, peer_id, items) for party_id in list(self.bindings)
                for peer_id, member in self._party_state(party_id).members if not member.is_local]

    def _recoveries(self, after: int) -> tuple[int, list[tuple[float, str, str, list[dict[str, Any]]]]]:
        found = []
        for record in self.store.read_all(after, stream=node_prefix(PEER, self.node_id),
                                          types=("ConnectionStateChanged",), on_error="skip"):
            after = record.global_position
            ids = peer_stream_ids(record.stream_id)
            if ids is None or not is_recovery(record):
                continue
            items = read_own_side(self.store, self.node_id, record, self.config.relays)
            if items:
                found.append((time.monotonic(), ids[0], ids[1], items))
        return after, found

    async def _send_accounts(self, waiting: list[tuple[float, str, str, list[dict[str, Any]]]]
                             ) -> list[tuple[float, str, str, list[dict[str, Any]]]]:
        """Send what the control server can take now; keep the rest a while (it may be away too)."""
        kept = []
        for entry in waiting:
            queued_at, party_id, peer_id, items = entry
            session = self.sessions.get(self.bindings.get(party_id, ""))
            if session is None or time.monotonic() - queued_at > ACCOUNT_KEEP_S:
                continue
            if not session.connected:
                kept.append(entry)
                continue
            try:
                await session.request("account", party_id=party_id, to=peer_id, items=items)
            except ControlUnavailable:
                kept.append(entry)
            except ControlError as error:
                logger.warning("the control server refused this side's account to {}: {}", peer_id, error)
            else:
                logger.info("told {} this side's account: {}", peer_id, ", ".join(i["kind"] for i in items))
        return kept

    async def _watch_mapping_forever(self) -> None:
        while True:
            await asyncio.sleep(MAPPING_CHECK_S)
            try:
                await self._check_mapping("periodic check")
            except Exception as error:  # the next interval tries again
                logger.warning("cannot check the public mapping: {}", error)

    async def _check_mapping(self, reason: str) -> bool:
        """Whether the WireGuard port's public mapping moved since it was last seen. On a move:
        the node records it, every relay session says HELLO from its new mapping, and every
        control plane gets the new candidates (peers punch or roam to the new endpoint)."""
        from agent.adapters import mapping_detector, puncher

        nat = self.nat
        if nat is None or not nat.public_ip or not nat.public_port or self._checking_mapping:
            return False  # no STUN answer at start: relay-only, nothing to compare with
        if getattr(self.interface, "interface", None) is None:
            return False  # no tunnel yet (no party): no peer needs the mapping
        detector = mapping_detector(self.config.stun, self.config.listen_port, self.node_id)
        if detector is None:
            return False
        self._checking_mapping = True
        try:
            mapped = await asyncio.to_thread(detector.mapping)
        finally:
            self._checking_mapping = False
        if mapped is None or mapped == (nat.public_ip, nat.public_port) or self.nat is not nat:
            return False
        old = f"{nat.public_ip}:{nat.public_port}"
        self.nat = replace(nat, public_ip=mapped[0], public_port=mapped[1])
        self.candidates = tuple(puncher(self.config.listen_port, self.nat).candidates())
        logger.warning("public mapping moved from {} to {}:{} ({}); candidates {}", old, *mapped, reason,
                       ", ".join(self.candidates))
        self._tell(m.PublicEndpointMoved(f"{mapped[0]}:{mapped[1]}", reason, nat.stun_server,
                                         self.candidates))
        relay_client = getattr(self.adapters, "relay_client", None)
        if relay_client is not None:
            await asyncio.to_thread(relay_client.rebind)
        for session in list(self.sessions.values()):
            if session.connected:
                await self._announce(session, self.nat.nat_type)
        return True

    async def _check_then_announce(self, session: Session) -> None:
        """A control session (re)connected: a broken one may mean a moved mapping, so look first."""
        if not await self._check_mapping("a control session connected again"):
            await self._announce(session, self.nat.nat_type if self.nat else "unknown")

    def _detect_nat(self) -> None:
        from agent.adapters import REAL, nat_detector, puncher

        if self.config.adapters != REAL:
            return
        self.nat = nat_detector(self.config.stun, self.config.listen_port, self.node_id).detect()
        self.candidates = tuple(puncher(self.config.listen_port, self.nat).candidates())
        unknown = "unknown (no STUN answer)" if self.config.stun else "unknown (no --stun server given)"
        logger.info("NAT {}; candidates {}", self.nat.nat_type if self.nat else unknown,
                    ", ".join(self.candidates) or "none")

    # ------------------------------------------------------------ NodeService (the API calls these)

    def info(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "peer_id": self.peer_id, "public_key": self.identity.public_key,
                "name": self.config.name, "default_control": self.config.control,
                "nat_type": self.nat.nat_type if self.nat else None, "candidates": list(self.candidates),
                "control": [{"url": url, "connected": s.connected, "last_error": s.last_error}
                            for url, s in sorted(self.sessions.items())],
                "broadcast": broadcast.status() if (broadcast := getattr(self, "broadcast", None)) else None}

    async def live_connections(self) -> list[dict[str, Any]]:
        status = await self._ask(m.StatusQuery())
        return [{**asdict(peer.connection), "name": peer.name} for party in status.parties
                for peer in party.peers if peer.connection is not None]

    async def create_party(self, name: str) -> dict[str, Any]:
        url = self.config.control
        if not url:
            raise ServiceError(400, "no control plane configured: start serve with --control "
                                    "ws://HOST:8667 (or file:///shared/dir)")
        request_id = await self._request_party("create", url, name=name)
        try:
            session = await self._session(url)
            answer = await self._control(session, "create_party", name=name)
        except ServiceError as error:
            await self._ask(m.FailPartyRequest(request_id, error.message))
            raise
        party = answer["party"]
        opened = await self._open(m.CreateParty, url, party, request_id, session)
        invite = Invite(session.invite_url, party["party_id"], name, answer["secret"]).encode()
        logger.info("created party {} ({})", party["party_id"], name)
        return {"party_id": party["party_id"], "name": name, "invite": invite,
                "virtual_ip": opened.virtual_ip, "local_peer_id": self.peer_id}

    async def join_party(self, invite_text: str) -> dict[str, Any]:
        try:
            invite = Invite.decode(invite_text)
        except InviteError as error:
            raise ServiceError(400, str(error)) from None
        if invite.party_id in self.bindings and self._party_state(invite.party_id).active:
            raise ServiceError(409, f"already in party {invite.party_id}")
        request_id = await self._request_party("join", invite.control_url, name=invite.party_name,
                                               party_id=invite.party_id)
        try:
            try:
                session = await self._session(invite.control_url)
                answer = await self._control(session, "join_party", party_id=invite.party_id,
                                             secret=invite.secret)
            except ServiceError as error:
                await self._ask(m.FailPartyRequest(request_id, error.message))
                raise
            party = answer["party"]
            opened = await self._open(m.JoinParty, invite.control_url, party, request_id, session)
        except ServiceError:
            await self._close_unused(invite.control_url)
            raise
        self._announce_members(party, invite.control_url)
        logger.info("joined party {} ({})", party["party_id"], party["name"])
        return {"party_id": party["party_id"], "name": party["name"], "virtual_ip": opened.virtual_ip,
                "local_peer_id": self.peer_id}

    def _active_party(self, party_id: str | None) -> str:
        """``party_id``, or the only active party when it is None; a ServiceError otherwise."""
        active = [p for p in self.bindings if self._party_state(p).active]
        if party_id is None:
            if not active:
                raise ServiceError(404, "this node is in no party")
            if len(active) > 1:
                raise ServiceError(400, f"this node is in {len(active)} parties: name one "
                                        f"({', '.join(sorted(active))})")
            party_id = active[0]
        if party_id not in active:
            raise ServiceError(404, f"this node is not in party {party_id}")
        return party_id

    async def export_device(self, name: str, party_id: str | None, endpoint: str | None) -> dict[str, Any]:
        """A device without LANrage joins through this node: its wg-quick config.

        Its key pair is made here; the actors get the public half only, and the private
        half exists nowhere but in the returned config (never in the log or a log line).
        """
        from mesh.endpoints import format_endpoint, parse_endpoint
        from mesh.interfaces import MeshError
        from mesh.keys import PrivateKey
        from mesh.wireguard.quick import QuickDevice, QuickRouter, render_quick_config

        party_id = self._active_party(party_id)
        if endpoint is not None:
            try:
                endpoint = format_endpoint(*parse_endpoint(endpoint))
            except ValueError as error:
                raise ServiceError(400, str(error)) from None
        else:
            endpoint = self._reachable_endpoint()
        key = PrivateKey.generate()
        exported = await self._ask(m.ExportDevice(party_id, name, key.public_key, endpoint))
        try:
            config = render_quick_config(
                QuickDevice(key, f"{exported.virtual_ip}/32", name=exported.name),
                QuickRouter(exported.router_public_key, exported.endpoint, allowed_ips=(exported.subnet,),
                            name=exported.router_name),
                party=self._party_state(party_id).name)
        except (ValueError, MeshError) as error:
            raise ServiceError(400, f"cannot write the device's config: {error}") from None
        url = self.bindings.get(party_id)
        if url in self.sessions:
            await self._announce(self.sessions[url], self.nat.nat_type if self.nat else "unknown")
        logger.info("exported device {} ({}) in party {} through this node, dialing {}", exported.name,
                    exported.virtual_ip, party_id, exported.endpoint)
        return {"party_id": party_id, "device_id": exported.device_id, "name": exported.name,
                "virtual_ip": exported.virtual_ip, "endpoint": exported.endpoint, "config": config}

    def _reachable_endpoint(self) -> str:
        """Where a device can dial this node: its public address as STUN saw it, else a candidate."""
        if self.nat is not None and self.nat.public_ip and self.nat.public_port:
            return f"{self.nat.public_ip}:{self.nat.public_port}"
        if self.candidates:
            return self.candidates[0]
        raise ServiceError(400, "no address of this node is known that a device could reach: give "
                                "--endpoint IP:PORT (a LAN address, or a public one with a port forward)")

    def device_handshakes(self) -> dict[str, float | None]:
        """Public key -> last handshake (unix time) of this node's WireGuard peers, read now."""
        interface = getattr(self.interface, "interface", None)
        if interface is None:
            return {}
        try:
            return {key: stats.last_handshake for key, stats in interface.peer_stats().items()}
        except Exception as error:  # the status still answers, without handshakes
            logger.warning("cannot read the WireGuard peers: {}", error)
            return {}

    async def leave_party(self, party_id: str | None) -> dict[str, Any]:
        party_id = self._active_party(party_id)
        closed = await self._ask(m.LeaveParty(party_id, reason="left by the user"))
        session = self.sessions.get(self.bindings.pop(party_id))
        if session is not None:
            try:
                await session.request("leave_party", party_id=party_id)
            except ControlError as error:
                # The tunnels are down already; the server expires the membership later.
                logger.warning("control plane did not record the leave of {}: {}", party_id, error)
        logger.info("left party {}", party_id)
        return {"party_id": party_id, "reason": closed.reason}

    # ------------------------------------------------------------ control plane

    async def _session(self, url: str, wait_s: float = 5.0) -> Session:
        session = self.sessions.get(url)
        if session is None:
            try:
                session = open_session(url, self.identity, self.config.name, self._on_push, self._on_welcome,
                                       discovery_root=self.config.control,
                                       on_reachability=self._on_reachability)
            except ValueError as error:
                raise ServiceError(400, str(error)) from None
            self.sessions[url] = session
            if isinstance(session, FileSession):
                for party_id, bound in self.bindings.items():
                    if bound == url:
                        session.adopt(party_id)
            await session.start()
        if wait_s and not await session.wait_connected(wait_s):
            named = " (--control)" if url == self.config.control else ""
            raise ServiceError(503, f"cannot reach the control server {url}{named}"
                                    + (f": {session.last_error}" if session.last_error else ""))
        return session

    async def _close_unused(self, url: str) -> None:
        """A join that failed: its control session ends unless a party or ``--control`` uses it (a
        refused or unreachable invite must not keep dialing its server for ever)."""
        if url == self.config.control or url in self.bindings.values():
            return
        session = self.sessions.pop(url, None)
        if session is not None:
            await session.stop()

    async def _control(self, session: Session, kind: str, **fields: Any) -> dict[str, Any]:
        try:
            return await session.request(kind, **fields)
        except ControlUnavailable as error:
            raise ServiceError(503, error.message) from None
        except ControlError as error:
            status = {"forbidden": 403, "not_found": 404, "not_member": 404}.get(error.code, 400)
            raise ServiceError(status, error.message) from None

    async def relay_ticket(self, party_id: str, peer_id: str, relay: str,
                           failed_session: str | None = None) -> dict[str, Any]:
        """A relay ticket for the session with ``peer_id``.

        The control server gives both ends of a pair the same session, whoever asks first,
        so both sides can ask independently; a ticket it already pushed to us is used first,
        unless it is for the session this side saw fail (``failed_session``, which the
        control server then never hands back).
        """
        received, offer = self.offers.pop((party_id, peer_id), (0.0, {}))
        fresh = time.monotonic() - received <= OFFER_FRESH_S
        if offer and fresh and offer.get("relay") == relay and offer.get("session_id") != failed_session \
                and float(offer.get("expiry_s", 0)) - time.time() > 60:
            self.tickets[(party_id, peer_id, relay)] = offer
            return offer
        url = self.bindings.get(party_id)
        if url is None:
            raise ServiceError(404, f"this node is not in party {party_id}")
        fields: dict[str, Any] = {"failed_session": failed_session} if failed_session else {}
        try:
            answer = await self._control(await self._session(url), "relay_request", party_id=party_id,
                                         to=peer_id, relay=relay, **fields)
        except ServiceError as error:
            kept = self.tickets.get((party_id, peer_id, relay))
            if error.status != 503 or kept is None or kept.get("session_id") == failed_session \
                    or float(kept.get("expiry_s", 0)) - time.time() <= 60:
                raise
            logger.info("relay ticket for {} from the last one (the control server is away: {})", peer_id,
                        error.message)
            return kept
        ticket = dict(answer["ticket"])
        self.tickets[(party_id, peer_id, relay)] = ticket
        return ticket

    def _on_push(self, url: str, body: dict[str, Any]) -> None:
        if body.get("type") == "relay_offer" and isinstance(body.get("ticket"), dict):
            ticket = body["ticket"]
            key = (str(ticket.get("party_id")), str(body.get("from")))
            self.offers[key] = (time.monotonic(), ticket)
            if key[0] in self.bindings:
                session_id = ticket.get("session_id")
                offered = session_id if isinstance(session_id, str) else None
                self._tell(m.PeerAskedForRelay(key[0], key[1], offered, str(ticket.get("relay"))))
            return
        party_id = body.get("party_id")
        if not isinstance(party_id, str) or self.bindings.get(party_id) != url:
            return
        kind = body.get("type")
        if kind in ("peer_joined", "peer_updated", "peer_left"):
            self._parties_changed()
        if kind in ("peer_joined", "peer_left"):
            # A member that left or joined anew: the sessions offered with it before are over.
            member = body.get("member")
            gone = body.get("peer_id") or (member.get("peer_id") if isinstance(member, dict) else None)
            self.offers.pop((party_id, str(gone)), None)
            for key in [key for key in self.tickets if key[:2] == (party_id, str(gone))]:
                del self.tickets[key]
        if kind in ("peer_joined", "peer_updated") and isinstance(body.get("member"), dict):
            if self._acceptable(url, party_id, body["member"]):
                self._tell(self._announcement(party_id, body["member"]))
        elif kind == "peer_left" and isinstance(body.get("peer_id"), str):
            self._tell(m.PeerDeparted(party_id, body["peer_id"], str(body.get("reason", "left"))))
        elif kind == "account" and isinstance(body.get("from"), str) and isinstance(body.get("items"), list):
            # The sender is who the control server says; the actors check every item again.
            items = tuple(_account_item(item) for item in body["items"][:MAX_ACCOUNT_ITEMS]
                          if isinstance(item, dict))
            said_by = ev.SAID_BY_SERVER if body.get("by") == "server" else ev.SAID_BY_PEER
            self._tell(m.PeerAccount(party_id, body["from"][:64], items, said_by))

    def _on_reachability(self, url: str, reachable: bool, error: str | None) -> None:
        """A control plane lost or back: the node actor records the change (tunnels carry on)."""
        if reachable:
            lost_at = self.control_lost_at.pop(url, None)
            outage_s = time.monotonic() - lost_at if lost_at is not None else None
            if outage_s is not None:  # a first connection is logged by the client ("connected to ...")
                logger.info("control server {} reachable again after {:.1f} s", url, outage_s)
            self._tell(m.ControlReachability(url, True, outage_s=outage_s))
        else:
            self.control_lost_at.setdefault(url, time.monotonic())
            logger.warning("control server {} unreachable: {}; tunnels stay up", url, error)
            self._tell(m.ControlReachability(url, False, error=error or "unreachable"))

    def _on_welcome(self, url: str, body: dict[str, Any]) -> None:
        self._parties_changed()
        if (self.candidates or self._routed_devices(url)) and self.loop is not None and url in self.sessions:
            self.loop.create_task(self._check_then_announce(self.sessions[url]))
        parties = body.get("parties")
        listed = ({p.get("party_id"): p for p in parties if isinstance(p, dict)}
                  if isinstance(parties, list) else {})
        for party_id, bound in list(self.bindings.items()):
            if bound != url:
                continue
            party = listed.get(party_id)
            if party is None:
                logger.warning("control plane {} no longer lists party {}; keeping its tunnels", url,
                               party_id)
                continue
            members = party.get("members")
            if not isinstance(members, list):
                continue
            self._announce_members(party, url)
            present = {member.get("peer_id") for member in members if isinstance(member, dict)}
            for peer_id, member in self._party_state(party_id).members:
                if not member.is_local and peer_id not in present:
                    self._tell(m.PeerDeparted(party_id, peer_id, "gone while the control plane was away"))

    async def _announce(self, session: Session, nat_type: str) -> None:
        try:
            await session.request("announce", nat_type=nat_type, candidates=list(self.candidates),
                                  devices=self._routed_devices(session.url))
        except ControlError as error:
            logger.warning("could not announce this node's candidates and devices: {}", error)

    def _routed_devices(self, url: str) -> list[dict[str, str]]:
        """The static devices this node routes for in the parties it reaches through ``url``."""
        devices = []
        for party_id, bound in self.bindings.items():
            if bound != url:
                continue
            party = self._party_state(party_id)
            devices.extend({"party_id": party_id, "device_id": device_id, "name": device.name,
                            "public_key": device.public_key, "virtual_ip": device.virtual_ip}
                           for device_id, device in party.devices if device.via_peer_id == self.peer_id)
        return devices

    def _announce_members(self, party: dict[str, Any], url: str) -> None:
        members = party.get("members")
        for member in members[:MAX_MEMBERS] if isinstance(members, list) else ():
            if isinstance(member, dict) and member.get("peer_id") != self.peer_id \
                    and self._acceptable(url, party["party_id"], member):
                self._tell(self._announcement(party["party_id"], member))

    def _acceptable(self, url: str, party_id: str, member: dict[str, Any]) -> bool:
        """Whether a member a server described obeys this node's rules (``mesh.control.accept``):
        inside the party's recorded subnet, no address another key holds on this node, printable
        name. A refused member is logged and recorded in the agent's stream, and never announced."""
        state = self._party_state(party_id)
        try:
            check_member(member, ipaddress.IPv4Network(state.subnet))
            check_disjoint({"members": [member]}, self._held_addresses(exclude=party_id, also=state))
        except (UntrustedParty, ValueError) as error:
            reason = f"refused member of party {party_id} from {url or 'its control plane'}: {error}"
            logger.warning("{}", reason)
            if self.loop is not None:
                refused = ev.MessageRejected(actor="agent", message_type="member", reason=reason[:500])
                self.loop.create_task(self._append([refused]))
            return False
        return True

    def _held_addresses(self, exclude: str, also: PartyState | None = None) -> list[tuple[str, str, str]]:
        """(address, public key, where) of every address this node's open parties configure; the
        party ``exclude`` only through ``also`` (its members other than the one being checked
        keep their own addresses: an address moving from one member key to another is refused)."""
        held = []
        states = [(p, self._party_state(p)) for p in self._open_parties() if p != exclude]
        if also is not None:
            states.append((exclude, also))
        for party_id, state in states:
            keys = {peer_id: member.public_key for peer_id, member in state.members}
            for peer_id, member in state.members:
                if member.virtual_ip:
                    held.append((member.virtual_ip, member.public_key,
                                 f"{shown(member.name) or peer_id}'s in party {party_id}"))
            for device_id, device in state.devices:
                key = (device.public_key if device.via_peer_id == self.peer_id
                       else keys.get(device.via_peer_id, ""))
                held.append((device.virtual_ip, key, f"device {device_id}'s in party {party_id}"))
        return held

    @staticmethod
    def _announcement(party_id: str, member: dict[str, Any]) -> m.PeerAnnounced:
        said = member.get("devices")
        devices = None if not isinstance(said, list) else tuple(
            m.StaticDeviceInfo(device_id=str(d.get("device_id", "")), name=str(d.get("name", "")),
                               public_key=str(d.get("public_key", "")),
                               virtual_ip=str(d.get("virtual_ip", "")))
            for d in said[:m.MAX_ANNOUNCED_DEVICES] if isinstance(d, dict))
        return m.PeerAnnounced(party_id=party_id, peer_id=member["peer_id"], name=member.get("name", ""),
                               public_key=member["public_key"], nat_type=member.get("nat_type", "unknown"),
                               virtual_ip=member.get("virtual_ip"),
                               candidates=tuple(member.get("candidates", ())), devices=devices)

    # ------------------------------------------------------------ actors and store

    async def _request_party(self, kind: str, url: str, name: str = "", party_id: str = "") -> str:
        """Record the decision to ask the control plane, before asking; the request's id."""
        request_id = uuid.uuid4().hex[:16]
        await self._ask(m.RequestParty(request_id, kind, url, name=name, party_id=party_id))
        return request_id

    async def _open(self, command: type[m.CreateParty] | type[m.JoinParty], url: str,
                    party: dict[str, Any], request_id: str, session: Session) -> m.PartyOpened:
        try:
            try:
                check_party(party, self.peer_id, self.config.actor_config.mesh_range)
                check_disjoint(party, self._held_addresses(exclude=party["party_id"]))
            except UntrustedParty as error:
                refusal = f"refused the party the control plane {url} described: {error}"
                logger.warning("{}", refusal)
                await self._ask(m.FailPartyRequest(request_id, refusal))
                raise ServiceError(502, refusal) from None
            me = next(x for x in party["members"] if x["peer_id"] == self.peer_id)
            opened = await self._ask(command(
                party_id=party["party_id"], name=party["name"], local_peer_id=self.peer_id,
                local_name=self.config.name, local_virtual_ip=me["virtual_ip"], subnet=party["subnet"],
                control_url=url, request_id=request_id))
        except ServiceError:
            if not isinstance(party, dict) or not isinstance(party.get("party_id"), str):
                raise
            with contextlib.suppress(ControlError):  # do not stay a member we cannot serve
                await session.request("leave_party", party_id=party["party_id"])
            if party["party_id"] in self._open_parties():
                with contextlib.suppress(ServiceError):
                    await self._ask(m.LeaveParty(party["party_id"], reason="could not be set up"))
            raise
        self.bindings[party["party_id"]] = url
        if isinstance(session, FileSession):
            session.adopt(party["party_id"])
        self._parties_changed()
        return opened

    def _parties_changed(self) -> None:
        """Broadcast emulation follows a party opened or a member come or gone without delay."""
        broadcast = getattr(self, "broadcast", None)
        if broadcast is not None:
            broadcast.parties_changed()

    async def _ask(self, message: Any, timeout_s: float = SOFT_TIMEOUT_S) -> Any:
        reply = await asyncio.wrap_future(self.runtime.ask(self.node, message, timeout_s))
        if reply is None:
            raise ServiceError(503, f"the node actor did not answer {type(message).__name__} in time")
        if isinstance(reply, m.CommandRejected):
            raise ServiceError(409, reply.reason)
        return reply

    def _tell(self, message: Any) -> None:
        self.runtime.tell(self.node, message)

    async def _append(self, events: list[Any]) -> None:
        """The agent's own facts (its stream ``agent:<node_id>``, one writer), off the event loop."""
        def append() -> None:
            stream = agent_stream(self.node_id)
            self.store.append(stream, events, self.store.stream_position(stream))

        await asyncio.to_thread(append)

    def _open_parties(self) -> tuple[str, ...]:
        records = self.store.read_stream(node_stream(self.node_id))
        return fold_stream(apply_node, NodeState(), (record.event for record in records)).parties

    def _restore_bindings(self) -> None:
        """Which control plane each open party lives on: its party stream says (``control_url``);
        logs written before that field existed said it in the agent stream."""
        legacy: dict[str, str] = {}
        for record in self.store.read_stream(agent_stream(self.node_id)):
            match record.event:
                case ev.PartyControlBound():
                    legacy[record.event.party_id] = record.event.control_url
                case ev.PartyControlUnbound():
                    legacy.pop(record.event.party_id, None)
        for party_id in self._open_parties():
            party = self._party_state(party_id)
            url = party.control_url or legacy.get(party_id)
            if party.active and url:
                self.bindings[party_id] = url

    def _party_state(self, party_id: str) -> PartyState:
        """The party's state from its stream, folded again only when the stream has grown."""
        stream = party_stream(self.node_id, party_id)
        position = self.store.stream_position(stream)
        cached = self._party_states.get(party_id)
        if cached is not None and cached[0] == position:
            return cached[1]
        records = self.store.read_stream(stream)
        state = fold_stream(apply_party, PartyState(), (record.event for record in records))
        self._party_states[party_id] = (records[-1].stream_position if records else 0, state)
        return state


def _account_item(item: dict[str, Any]) -> m.AccountItem:
    def number(value: Any) -> float:
        plain = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if plain else float("nan")

    ended = item.get("ended_at")
    return m.AccountItem(kind=str(item.get("kind", ""))[:40], started_at=number(item.get("started_at")),
                         ended_at=None if ended is None else number(ended),
                         detail=str(item.get("detail", ""))[:400])
