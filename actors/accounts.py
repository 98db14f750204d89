"""A member's account of its own side: checked before it is recorded, never acted on.

The account comes from the network (another member, through the control server): every
field is bounded and checked here again, whatever the server checked. It is recorded as
``PeerAccountReceived`` (one row a thing said) for ``diagnose`` and display only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from actors.messages import AccountItem
from events import types as ev

MAX_ITEMS = 8  # as the control protocol allows (mesh.control.protocol.MAX_ACCOUNT_ITEMS)
MAX_DETAIL = 200
# Unix times from 2020 to 2100: a node's clock, never a counter or a year 9999.
EARLIEST, LATEST = 1.5e9, 4.1e9


def _time(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not EARLIEST <= value <= LATEST:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat()


def account_events(party_id: str, peer_id: str, items: Sequence[Any],
                   said_by: str = ev.SAID_BY_PEER) -> list[ev.PeerAccountReceived] | str:
    """The events recording ``items`` about ``peer_id``, or why the account is refused.

    A member says what it saw itself (``ACCOUNT_KINDS``); the control server says only when it
    stopped hearing from it (``ACCOUNT_OFFLINE``).
    """
    if not isinstance(items, tuple | list) or not 0 < len(items) <= MAX_ITEMS:
        return f"an account holds 1 to {MAX_ITEMS} items"
    kinds = {ev.SAID_BY_PEER: ev.ACCOUNT_KINDS, ev.SAID_BY_SERVER: (ev.ACCOUNT_OFFLINE,)}.get(said_by)
    if kinds is None:
        return "an account is said by the peer or by the control server"
    events = []
    for item in items:
        if not isinstance(item, AccountItem):
            return "an account item must be an AccountItem"
        if item.kind not in kinds:
            return f"unknown account kind {str(item.kind)[:40]!r}"
        started = _time(item.started_at)
        ended = "" if item.ended_at is None else _time(item.ended_at)
        if started is None or ended is None or (ended and item.ended_at < item.started_at):
            return "account times must be unix times from 2020 to 2100, the end after the start"
        detail = item.detail if isinstance(item.detail, str) else ""
        if len(detail) > MAX_DETAIL or not detail.isprintable():
            return f"account detail must be printable text of up to {MAX_DETAIL} characters"
        events.append(ev.PeerAccountReceived(party_id=party_id, peer_id=peer_id, kind=item.kind,
                                             started_at=started, ended_at=ended, detail=detail,
                                             said_by=said_by))
    return events
