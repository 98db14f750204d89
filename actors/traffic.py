"""Traffic before the first probe: a connecting tunnel that WireGuard shows carrying traffic is up.

A connection becomes ``connected`` when a probe is answered. But traffic can flow before
that (in the lab, pings answered 0.5 s after the join while the first probe was still out),
and an outage then left no trace: the log said ``connecting`` for the whole outage and
``connected`` after it. So while connecting, WireGuard's counters are read at each probe
tick too; a completed handshake and bytes received since the previous reading mean the
tunnel carries traffic, and the connection records ``connected`` at once. An outage after
that is a drop like any other, with its own transition, which ``diagnose`` explains.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.interfaces import PeerStats

TRAFFIC = "traffic"  # the effect tag of the reading


@dataclass(frozen=True)
class Reading:
    rx_bytes: int
    at: float  # thespian time
    spell_start: float  # wall time: this connecting spell began no earlier than this


def traffic_flows(previous: Reading | None, stats: PeerStats | None, now: float, wall_now: float,
                  tick_s: float, handshake_stale_s: float) -> tuple[Reading | None, str | None]:
    """The reading to keep, and the reason to record ``connected`` if traffic flows now.

    Readings come every probe tick (``tick_s``) while connecting. ``previous`` counts only if it
    is at most 2.5 ticks old: an older one may come from before this connecting spell, when the
    tunnel carried traffic that says nothing of now. The handshake must be one made in this
    spell: after an outage, a session from before it and the peer's handshake initiations
    (which WireGuard counts as received bytes) say nothing of a working tunnel.
    """
    if stats is None:
        return None, None
    if previous is None or now - previous.at > 2.5 * tick_s:
        return Reading(stats.rx_bytes, now, wall_now - tick_s), None
    reading = Reading(stats.rx_bytes, now, previous.spell_start)
    if stats.rx_bytes <= previous.rx_bytes:
        return reading, None
    if not stats.last_handshake or stats.last_handshake < previous.spell_start \
            or wall_now - stats.last_handshake > handshake_stale_s:
        return reading, None
    age = max(0.0, wall_now - stats.last_handshake)
    received = stats.rx_bytes - previous.rx_bytes
    return None, (f"traffic flows before the first probe was answered: WireGuard handshake {age:.0f} s ago, "
                  f"{received} bytes received in {now - previous.at:.1f} s")
