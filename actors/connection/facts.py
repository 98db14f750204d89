"""The events every connection rule builds alike: a transition and a reconnect attempt."""

from __future__ import annotations

import time
from dataclasses import dataclass

from events import types as ev
from events.base import Event
from events.fold import ConnectionState
from mesh.interfaces import PeerStats

UP = (ev.CONNECTED, ev.DEGRADED)


@dataclass(frozen=True)
class Ids:
    party_id: str
    peer_id: str

    def base(self) -> dict[str, str]:
        return {"party_id": self.party_id, "peer_id": self.peer_id}


def tunnel_evidence(stats: PeerStats | None, recent_probes: str) -> dict[str, object]:
    """What a setback records of the tunnel: WireGuard's handshake age and the recent probes."""
    handshake = stats.last_handshake if stats else None
    age = round(max(0.0, time.time() - handshake), 1) if handshake else None
    return {"last_handshake_age_s": age, "recent_probes": recent_probes}


def transition(ids: Ids, state: ConnectionState, to_state: str, reason: str, latency_ms: float | None,
               stats: PeerStats | None, recent_probes: str) -> ev.ConnectionStateChanged:
    """``state`` -> ``to_state``; a setback carries the tunnel's evidence."""
    setback = to_state in (ev.DEGRADED, ev.FAILED) or (state.state in UP and to_state not in UP
                                                         and to_state not in (ev.CLOSED, ev.CLEANUP))
    return ev.ConnectionStateChanged(
        **ids.base(), from_state=state.state, to_state=to_state, reason=reason,
        path=state.path, endpoint=state.endpoint, relay=state.relay, latency_ms=latency_ms,
        **(tunnel_evidence(stats, recent_probes) if setback else {}))  # type: ignore[arg-type]


def reconnect(ids: Ids, state: ConnectionState, attempt: int, max_attempts: int, reason: str,
              stats: PeerStats | None, recent_probes: str) -> list[Event]:
    return [ev.ReconnectAttempted(**ids.base(), attempt=attempt, max_attempts=max_attempts, reason=reason),
            transition(ids, state, ev.CONNECTING, f"reconnect attempt {attempt}/{max_attempts}: {reason}",
                       None, stats, recent_probes)]
