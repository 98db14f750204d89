"""The node's HTTP API (FastAPI): party commands, status, metrics, history, dashboard.

``GET`` routes read the event store (async engine) through an incrementally folded
projection; ``POST`` routes go to the node agent (``NodeService``).

Any web page the user opens can send requests to 127.0.0.1, and a DNS-rebinding page
can even read the answers of its own origin. So: a request whose ``Host`` is not this
API's own name (127.0.0.1, localhost, [::1], the configured listen address) gets a
400 before any route runs; every route that tells anything about peers or parties
needs the bearer token ``serve`` writes to the state directory. The dashboard page
itself holds no data: serving it sets a view cookie (HttpOnly, SameSite=Strict,
derived from the token, valid for reads only) that the page's same-origin fetches
carry, and that no other site's page is sent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from api import models
from api.metrics import new_registry
from api.reader import Projection, StoreReader, event_json, remote_peers, status, summary
from api.service import NodeService, ServiceError
from api.token import token_matches
from store.errors import StoreError
from store.peers import AmbiguousPeer, PeerNotFound, resolve_peer
from store.queries import EventFilter

UNAUTHORIZED = "missing or wrong API token (see <state-dir>/api-token)"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
VIEW_COOKIE = "lanrage_view"
# Routes that say nothing about peers or parties: the dashboard shell and the API schema.
# No /docs or /redoc: their pages load third-party JavaScript into this origin (the schema is enough).
PUBLIC_PATHS = frozenset({"/", "/openapi.json"})
READ_METHODS = frozenset({"GET", "HEAD"})


@functools.cache
def dashboard_page() -> str:
    """The dashboard's page, read when it is first served (or its policy first sent)."""
    return (Path(__file__).parent / "dashboard.html").read_text()


def _inline_hash(tag: str) -> str:
    """The CSP source of the dashboard's one inline ``tag`` element (its SHA-256)."""
    body = dashboard_page().split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


# The dashboard opens with a one-time code from `lanrage dashboard` (which reads the token), never
# for a plain GET: any local program could GET the page, and its cookie reads the node's data.
DASHBOARD_CODE_S = 60
MAX_DASHBOARD_CODES = 8
DASHBOARD_CLOSED = ("<!doctype html><title>LANrage</title><p>This dashboard opens with a one-time link: "
                    "run <code>lanrage dashboard</code> on this machine and open the URL it prints.</p>")
# Nothing but this origin and the dashboard's own inline script and style: no third-party code,
# no frames, no form posts elsewhere.
@functools.cache
def content_security_policy() -> str:
    return (f"default-src 'none'; script-src {_inline_hash('script')}; "
            f"style-src {_inline_hash('style')}; connect-src 'self'; img-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PeerId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
# A peer as people name it: a name, an id prefix or PARTY:NAME (no slash, no control character).
PeerQuery = Annotated[str, PathParam(min_length=1, max_length=200, pattern=r"^[^/\x00-\x1f\x7f]+$")]
_bearer = HTTPBearer(auto_error=False, description="The token `serve` writes to <state-dir>/api-token.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.ErrorOut}, 401: {"model": models.ErrorOut}, 404: {"model": models.ErrorOut},
    409: {"model": models.ErrorOut}, 503: {"model": models.ErrorOut}}


def view_cookie(token: str) -> str:
    """The dashboard's read-only credential: not the token, and useless for POST routes."""
    return hmac.new(token.encode(), b"lanrage-dashboard-view-v1", hashlib.sha256).hexdigest()


def allowed_hosts(listen_host: str | None) -> list[str]:
    hosts = list(LOCAL_HOSTS)
    if listen_host and listen_host not in ("0.0.0.0", "::", ""):
        hosts.append(f"[{listen_host}]" if ":" in listen_host else listen_host)
    return hosts


def create_app(service: NodeService, reader: StoreReader, token: str, listen_host: str | None = None,
               hosts: Sequence[str] | None = None) -> FastAPI:
    """The API; it answers to the Host names ``hosts`` (default: loopback and ``listen_host``)."""
    app = FastAPI(title="LANrage node API", version="1", docs_url=None, redoc_url=None,
                  description="Parties, status, metrics and history of one LANrage node. "
                              "Every route but the dashboard shell and this schema needs "
                              "`Authorization: Bearer <state-dir/api-token>`.")
    view = view_cookie(token)
    # This node's streams only: several nodes may share one database.
    node_id = service.info().get("node_id")
    projection = Projection(reader, node_id)
    registry, collector = new_registry()

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if credentials is None or not token_matches(token, credentials.credentials):
            raise HTTPException(401, UNAUTHORIZED,
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def _token_first(request: Request, call_next: Any) -> Response:
        # Checked before the body is parsed: without the token, every route but the shell is a 401.
        if request.url.path not in PUBLIC_PATHS:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            bearer = scheme.lower() == "bearer" and token_matches(token, presented.strip() or None)
            viewer = request.method in READ_METHODS and token_matches(view, request.cookies.get(VIEW_COOKIE))
            if not (bearer or viewer):
                return JSONResponse({"detail": UNAUTHORIZED}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer",
                                             "Content-Security-Policy": content_security_policy()})
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = content_security_policy()
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # Added last, so it runs first: a foreign Host never reaches a route.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts or allowed_hosts(listen_host)),
                       www_redirect=False)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, error: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"event store unavailable: {error}"}, status_code=503)

    # ------------------------------------------------------------ commands

    mutating: dict[str, Any] = {"dependencies": [Depends(authorized)], "responses": _ERRORS}
    reading: dict[str, Any] = {"dependencies": [Depends(_bearer)]}  # documents the token in the schema

    @app.post("/party/create", response_model=models.PartyCreatedOut, **mutating)
    async def create_party(body: models.CreatePartyIn) -> dict[str, Any]:
        """Create a party; the answer's `invite` is the one string to send to friends."""
        return await service.create_party(body.name)

    @app.post("/party/join", response_model=models.PartyJoinedOut, **mutating)
    async def join_party(body: models.JoinPartyIn) -> dict[str, Any]:
        return await service.join_party(body.invite)

    @app.post("/party/leave", response_model=models.PartyLeftOut, **mutating)
    async def leave_party(body: models.LeavePartyIn | None = None) -> dict[str, Any]:
        """Leave `party_id`, or the only active party when it is omitted."""
        return await service.leave_party(body.party_id if body else None)

    @app.post("/party/export", response_model=models.ExportDeviceOut, **mutating)
    async def export_device(body: models.ExportDeviceIn) -> dict[str, Any]:
        """A device without LANrage joins through this node: the answer's `config` is its
        wg-quick file (it holds the device's private key, which is kept nowhere else)."""
        return await service.export_device(body.name, body.party_id, body.endpoint)

    # ------------------------------------------------------------ reads

    @app.get("/status", response_model=models.StatusOut, **reading)
    async def get_status(all: Annotated[bool, Query(description="Include parties already left.")] = False
                         ) -> dict[str, Any]:
        shown = status(await projection.refresh(), include_inactive=all)
        handshakes = getattr(service, "device_handshakes", dict)()
        for party in shown["parties"]:
            for device in party["devices"]:
                if device["routed_here"]:
                    device["last_handshake"] = handshakes.get(device["public_key"])
        return {**shown, "agent": service.info()}

    @app.get("/api/metrics/summary", response_model=models.SummaryOut, **reading)
    async def metrics_summary() -> dict[str, Any]:
        return summary(await projection.refresh())

    @app.get("/api/metrics/peers", response_model=list[models.PeerMetricsOut], **reading)
    async def metrics_peers() -> list[dict[str, Any]]:
        return remote_peers(await projection.refresh())

    @app.get("/api/metrics/peers/{peer_id}", response_model=models.PeerDetailOut,
             responses={404: {"model": models.ErrorOut}}, **reading)
    async def metrics_peer(peer_id: PeerId,
                           samples: Annotated[int, Query(ge=1, le=1000)] = 60) -> dict[str, Any]:
        peer = next((p for p in remote_peers(await projection.refresh()) if p["peer_id"] == peer_id), None)
        if peer is None:
            raise HTTPException(404, f"no peer {peer_id} in an active party")
        return {"peer": peer, "samples": await reader.samples(peer_id, samples, node_id)}

    @app.get("/api/events", response_model=models.EventsOut, **reading)
    async def list_events(
            stream: Annotated[str | None, Query(max_length=200, description="Stream id or prefix.")] = None,
            type: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006 (FastAPI copies it)
            since: datetime | None = None, until: datetime | None = None,
            after: Annotated[int, Query(ge=0, le=2**62)] = 0,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """Events in global order after `after`; filters combine with AND. Page with `next_after`."""
        if any(len(name) > 100 for name in type):
            raise HTTPException(400, "an event type name is at most 100 characters")
        records = await reader.events(after, limit, EventFilter(stream or None, tuple(type), since, until))
        return {"events": [event_json(r) for r in records],
                "next_after": records[-1].global_position if records else after}

    @app.get("/api/peers/{peer_id}/history", response_model=models.HistoryOut,
             responses={400: {"model": models.ErrorOut}, 404: {"model": models.ErrorOut}}, **reading)
    async def peer_history(peer_id: PeerQuery,
                           limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> dict[str, Any]:
        """One row per connection state transition (the `connection_history` view).

        `peer_id` is a peer name, an id or id prefix, or `PARTY:NAME`; 404 lists the known
        peers when nothing matches, 400 the candidates when several do.
        """
        try:
            chosen = resolve_peer(await reader.directory(), peer_id)
        except PeerNotFound as error:
            raise HTTPException(404, str(error)) from None
        except AmbiguousPeer as error:
            raise HTTPException(400, str(error)) from None
        streams = sorted({entry.stream_id for entry in chosen if entry.stream_id})
        return {"peer_id": chosen[0].peer_id, "name": chosen[0].name, "party_id": chosen[0].party_id,
                "transitions": await reader.history(streams, limit)}

    @app.get("/api/actors", response_model=models.LiveOut, **reading)
    async def live_connections() -> dict[str, Any]:
        """The peer connections as the actors hold them now, not as the log is projected: with
        `replay --at now`, a way to check that live state and the log agree."""
        return {"connections": await service.live_connections()}

    @app.get("/api/timeline", response_model=models.TimelineOut,
             responses={400: {"model": models.ErrorOut}, 404: {"model": models.ErrorOut}}, **reading)
    async def timeline(
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
            peer: Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^/\x00-\x1f\x7f]+$",
                                              description="A peer name, id prefix or PARTY:NAME.")] = None,
            since: Annotated[datetime | None, Query(description="From this time (ISO 8601).")] = None,
            until: Annotated[datetime | None, Query(description="Up to this time (ISO 8601).")] = None,
            before: Annotated[int | None, Query(ge=1, le=2**62,
                                                description="Older than this log position: the "
                                                            "previous page's `next_before`.")] = None,
    ) -> dict[str, Any]:
        """Connection state changes and path switches (`peer_timeline`), newest first: of every peer
        or one, within a time range; page back through any amount of history with `next_before`
        (null on the last page)."""
        streams = None
        if peer is not None:
            chosen = await _resolve(peer)
            streams = sorted({entry.stream_id for entry in chosen if entry.stream_id})
        rows = await reader.timeline(limit, streams=streams, since=since, until=until, before=before)
        return {"rows": rows, "next_before": rows[-1]["global_position"] if len(rows) == limit else None}

    async def _resolve(peer: str) -> list[Any]:
        try:
            return resolve_peer(await reader.directory(), peer)
        except PeerNotFound as error:
            raise HTTPException(404, str(error)) from None
        except AmbiguousPeer as error:
            raise HTTPException(400, str(error)) from None

    @app.get("/api/replay", response_model=models.ReplayOut, **reading)
    async def replay_at(position: Annotated[int, Query(ge=0, le=2**62)]) -> dict[str, Any]:
        """Every party and connection as they were after global position `position` (the replay tool)."""
        world = await reader.world_at(position)
        return {"position": world.position,
                "parties": [asdict(party) for party in world.parties.values()],
                "connections": [{"stream_id": stream, **asdict(state)}
                                for stream, state in world.connections.items()]}

    @app.get("/api/peers/{peer_id}/diagnose", response_model=models.DiagnoseOut,
             responses={400: {"model": models.ErrorOut}, 404: {"model": models.ErrorOut}}, **reading)
    async def peer_diagnose(
            peer_id: PeerQuery,
            position: Annotated[int, Query(ge=0, le=2**62)] = 2**62,
            at: Annotated[datetime | None, Query(description="The incident at this time, as "
                                                             "`diagnose --at` picks it (ISO 8601).")] = None,
    ) -> dict[str, Any]:
        """Why the peer dropped, cause first (`diagnose`): its incident at `at`, else its last one
        at or before `position`."""
        directory = await reader.directory()
        try:
            chosen = resolve_peer(directory, peer_id)
        except PeerNotFound as error:
            raise HTTPException(404, str(error)) from None
        except AmbiguousPeer as error:
            raise HTTPException(400, str(error)) from None
        names = {(e.party_id, e.peer_id): e.name for e in directory if e.name}
        reports = [report for entry in chosen
                   if (report := await reader.diagnosis(entry, names, position, at)) is not None]
        reports.sort(key=lambda report: report["global_position"])
        return {"peer_id": chosen[0].peer_id, "name": chosen[0].name,
                "incident": reports[-1] if reports else None}

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
             **reading)
    async def prometheus() -> Response:
        collector.world = await projection.refresh()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    codes: dict[str, float] = {}  # one-time dashboard codes -> when they expire (monotonic)

    @app.post("/dashboard/code", **mutating)
    async def dashboard_code() -> dict[str, Any]:
        """A one-time code that opens the dashboard (`lanrage dashboard` prints its URL)."""
        now = time.monotonic()
        for stale in [c for c, until in codes.items() if until <= now]:
            del codes[stale]
        while len(codes) >= MAX_DASHBOARD_CODES:
            del codes[min(codes, key=codes.__getitem__)]
        code = secrets.token_urlsafe(24)
        codes[code] = now + DASHBOARD_CODE_S
        return {"path": f"/?code={code}", "expires_in_s": DASHBOARD_CODE_S}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(request: Request, code: str | None = Query(None, max_length=64)) -> Response:
        # Only pages served from this API's own Host get here (the Host check ran first).
        if code is not None:
            until = codes.pop(code, None)
            if until is None or until <= time.monotonic():
                return HTMLResponse(DASHBOARD_CLOSED, status_code=401)
            # The code is spent; the page reloads without it, holding the view cookie.
            opened = RedirectResponse("/", status_code=303)
            opened.set_cookie(VIEW_COOKIE, view, httponly=True, samesite="strict", path="/")
            return opened
        if not token_matches(view, request.cookies.get(VIEW_COOKIE)):
            return HTMLResponse(DASHBOARD_CLOSED, status_code=401)
        return HTMLResponse(dashboard_page())

    return app
