"""The control protocol: JSON text frames over WebSocket, each with a ``type`` and ``v``.

Requests from a node may carry an ``id`` (up to 64 characters); the answer echoes it
in ``re``. Pushes from the server carry no ``re``. Every server message has ``ts``,
the server's unix time, which nodes use to agree on punch timing. See docs/control.md.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from mesh.endpoints import parse_endpoint

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # larger frames get a too_large error, the connection stays open
MAX_FRAME_BYTES = 1024 * 1024  # larger frames close the connection (WebSocket code 1009)

# Error codes of the ``error`` message.
BAD_JSON = "bad_json"
TOO_LARGE = "too_large"
BAD_MESSAGE = "bad_message"
UNKNOWN_TYPE = "unknown_type"
UNSUPPORTED_VERSION = "unsupported_version"
NOT_AUTHENTICATED = "not_authenticated"
AUTH_FAILED = "auth_failed"
FORBIDDEN = "forbidden"
QUOTA = "quota"
NOT_FOUND = "not_found"
NOT_MEMBER = "not_member"
PEER_OFFLINE = "peer_offline"
NO_RELAY = "no_relay"
RATE_LIMITED = "rate_limited"
INTERNAL = "internal"

# Close codes of the application (4000-4999 are free for applications).
CLOSE_HEARTBEAT_TIMEOUT = 4000
CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_SUPERSEDED = 4003
CLOSE_TOO_MANY_ERRORS = 4004
CLOSE_TOO_SLOW = 4005  # the node did not read what the server sent it
CLOSE_SERVER_STOPPING = 1001

# No control character (C0, DEL, C1: U+009B is a one-byte CSI) and no bidi override or isolate:
# names are printed on other members' terminals and in their logs (mesh.text.UNSAFE).
Name = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                        pattern=r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]+$")]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Key = Annotated[str, StringConstraints(min_length=44, max_length=44, pattern=r"^[A-Za-z0-9+/]{43}=$")]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Secret = Annotated[str, StringConstraints(max_length=256)]
NatType = Literal["open", "full_cone", "restricted", "port_restricted", "symmetric", "udp_blocked",
                  "unknown"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1] = 1
    id: RequestId | None = None


class Hello(_Request):
    type: Literal["hello"]
    public_key: Key
    name: Name = "node"


class Auth(_Request):
    type: Literal["auth"]
    proof: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    # The server the node made its proof for (see mesh.control.identity.ServerBinding).
    server_key: Key
    authority: Annotated[str, StringConstraints(min_length=3, max_length=300)]
    fingerprint: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{64})?$")] = ""


class CreateParty(_Request):
    type: Literal["create_party"]
    name: Name


class JoinParty(_Request):
    type: Literal["join_party"]
    party_id: Ident
    secret: Secret = ""


class LeaveParty(_Request):
    type: Literal["leave_party"]
    party_id: Ident


class Heartbeat(_Request):
    type: Literal["heartbeat"]


MAX_DEVICES = 16  # static devices one member routes for, in all its parties together


class AnnouncedDevice(BaseModel):
    """A device without LANrage that the announcing member routes for (see ``party export``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    party_id: Ident
    device_id: Ident
    name: Name
    public_key: Key
    virtual_ip: Annotated[str, StringConstraints(min_length=7, max_length=15,
                                                 pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")]


class Announce(_Request):
    type: Literal["announce"]
    nat_type: NatType = "unknown"
    candidates: Annotated[list[str], Field(max_length=16)] = []
    devices: Annotated[list[AnnouncedDevice], Field(max_length=MAX_DEVICES)] = []

    @field_validator("candidates")
    @classmethod
    def _endpoints(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_endpoint(value)
        return values


class Signal(_Request):
    type: Literal["signal"]
    party_id: Ident
    to: Ident
    payload: dict[str, Any]


class RelayRequest(_Request):
    type: Literal["relay_request"]
    party_id: Ident
    to: Ident
    relay: str | None = None
    # The session this side saw fail (its relay died or refused it): never handed back.
    failed_session: Ident | None = None


class ListRelays(_Request):
    type: Literal["list_relays"]


MAX_ACCOUNT_ITEMS = 8  # what one member says about its own side around one drop
AccountKind = Literal["uplink_down", "crashed", "restarted", "endpoint_changed", "left", "relay_failed"]
# Unix times from 2020 to 2100: a node's clock, never a counter or a year 9999.
UnixTime = Annotated[float, Field(ge=1.5e9, le=4.1e9)]


class AccountItem(BaseModel):
    """One thing a member saw on its own side: what, from when, until when (None: still)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: AccountKind
    started_at: UnixTime
    ended_at: UnixTime | None = None
    detail: Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""


class Account(_Request):
    """A member's account of its own side to another member (see docs/control.md): the server
    names the sender, so a member speaks only about itself."""

    type: Literal["account"]
    party_id: Ident
    to: Ident
    items: Annotated[list[AccountItem], Field(min_length=1, max_length=MAX_ACCOUNT_ITEMS)]


REQUESTS: dict[str, type[_Request]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (Hello, Auth, CreateParty, JoinParty, LeaveParty, Heartbeat, Announce, Signal,
                  RelayRequest, ListRelays, Account)
}


class ProtocolError(Exception):
    """A message the server refuses: ``code`` and a one-line ``message`` for the sender."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_request(frame: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> _Request:
    """Validate one frame from a node; raise ProtocolError with a clear reason."""
    if isinstance(frame, bytes):
        raise ProtocolError(BAD_JSON, "binary frames are not supported: send JSON text")
    if len(frame) > max_bytes or len(frame.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(TOO_LARGE, f"message larger than {max_bytes} bytes")
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as error:
        raise ProtocolError(BAD_JSON, f"not valid JSON: {str(error)[:100]}") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_MESSAGE, "a message must be a JSON object")
    request_id = data.get("id") if isinstance(data.get("id"), str) else None
    request_id = request_id[:64] if request_id else None
    version = data.get("v")
    if "v" not in data:
        raise ProtocolError(UNSUPPORTED_VERSION, f"missing protocol version 'v' (this server speaks "
                                                 f"v{VERSION})", request_id)
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported; "
                                                 f"this server speaks v{VERSION}", request_id)
    kind = data.get("type")
    model = REQUESTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        shown = kind[:40] if isinstance(kind, str) else kind if kind is None else type(kind).__name__
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {shown!r}", request_id)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise ProtocolError(BAD_MESSAGE, f"{kind}: {where}: {first['msg']}", request_id) from None


def message(kind: str, re: str | None = None, **fields: Any) -> str:
    """A server message as a JSON text frame."""
    body: dict[str, Any] = {"type": kind, "v": VERSION, "ts": round(time.time(), 6)}
    if re is not None:
        body["re"] = re
    body.update(fields)
    return json.dumps(body, separators=(",", ":"))


def error(code: str, text: str, re: str | None = None) -> str:
    return message("error", re=re, code=code, message=text)
