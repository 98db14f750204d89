"""A lost first initiation costs a second, not WireGuard's 5 s retry (``UapiWireGuard``'s kick).

Real wireguard-go on two lab hosts. The side with the smaller public key (the one that
kicks) configures its peer first: its initiation reaches a WireGuard that does not know
it yet and is dropped, and WireGuard will not send another for 5 s. The other side
then configures it without an endpoint or keepalive, so it never initiates itself: only
the kick can bring the handshake. With the kick switched off, the same set-up has no
handshake for seconds, which shows the kick is what made the difference.

The same for a session gone stale: after an outage that outlived it, a side configured
again on the endpoint it had kicks too (here the other side forgot the session, as a
WireGuard whose keys expired during the outage does, and never initiates).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.adapters import UapiWireGuard
from lab import HostSpec, Lab
from mesh.keys import PrivateKey
from mesh.wireguard import WireGuardInterface

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
PORT = 51820
_names = itertools.count()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.build([HostSpec("alice", "open"), HostSpec("bob", "open")], relays=0, stun=False) as built:
        yield built


def _ordered_keys() -> tuple[PrivateKey, PrivateKey]:
    """(the kicker's key, the other's): the kicker's public key is the smaller one."""
    one, two = PrivateKey.generate(), PrivateKey.generate()
    return (one, two) if one.public_key < two.public_key else (two, one)


@dataclass
class Pair:
    """Two WireGuard interfaces, bob's driven by ``UapiWireGuard`` (the kicker: its key is the
    smaller), alice's directly; each side's virtual IP is ``ips[side]``."""

    kicker: UapiWireGuard
    kicker_wg: WireGuardInterface
    other_wg: WireGuardInterface
    kicker_key: PrivateKey
    other_key: PrivateKey
    ips: tuple[str, str]  # (kicker's, other's)

    def handshake_after(self, started: float, since: float, limit_s: float) -> float | None:
        """Seconds from ``started`` (monotonic) to the kicker's first handshake later than
        ``since`` (wall clock), or None within ``limit_s``."""
        while time.monotonic() - started < limit_s:
            stats = self.kicker_wg.peer_stats().get(self.other_key.public_key)
            if stats is not None and (stats.last_handshake or 0.0) > since:
                return time.monotonic() - started
            time.sleep(0.05)
        return None


@contextlib.contextmanager
def _pair(lab: Lab, subnet: int) -> Iterator[Pair]:
    kicker_key, other_key = _ordered_keys()
    n = next(_names)
    ips = (f"10.66.{subnet}.{2 * n + 2}", f"10.66.{subnet}.{2 * n + 1}")
    kicker_wg = WireGuardInterface.create(kicker_key, f"{ips[0]}/16", name=f"t{lab.run_id}k{n}b",
                                          listen_port=PORT, netns=lab.host("bob").netns)
    other_wg = WireGuardInterface.create(other_key, f"{ips[1]}/16", name=f"t{lab.run_id}k{n}a",
                                         listen_port=PORT, netns=lab.host("alice").netns)
    try:
        kicker = UapiWireGuard(kicker_wg.name, kicker_key.public_key, PORT,
                               state_dir=str(lab.workdir / f"state-{kicker_wg.name}"))
        yield Pair(kicker, kicker_wg, other_wg, kicker_key, other_key, ips)
    finally:
        other_wg.close()
        kicker_wg.close()


def _handshake_after(lab: Lab, kicks: int, limit_s: float) -> float | None:
    """Seconds from the kicker's configuration to its first handshake, or None within ``limit_s``."""
    with _pair(lab, 5) as pair:
        pair.kicker.KICKS = kicks
        started = time.monotonic()
        pair.kicker.configure_peer(pair.other_key.public_key, f"{lab.host('alice').public_ip}:{PORT}",
                                   [f"{pair.ips[1]}/32"], 25)
        time.sleep(0.2)  # the first initiation has been dropped by now: alice did not know bob
        pair.other_wg.configure_peer(pair.kicker_key.public_key, None, [f"{pair.ips[0]}/32"], keepalive_s=0)
        return pair.handshake_after(started, 0.0, limit_s)


def test_a_lost_first_initiation_is_replaced_within_about_a_second(lab: Lab) -> None:
    took = _handshake_after(lab, kicks=UapiWireGuard.KICKS, limit_s=4.0)
    assert took is not None, "no handshake within 4 s: the kick did not replace the lost initiation"
    assert took < UapiWireGuard.STAGGER_S + UapiWireGuard.KICK_AFTER_S + 1.0


def test_without_the_kick_the_same_set_up_waits_for_wireguards_retry(lab: Lab) -> None:
    assert _handshake_after(lab, kicks=0, limit_s=3.0) is None


def _stale_handshake_after(lab: Lab, session_fresh_s: float, limit_s: float) -> float | None:
    """Seconds from configuring the same endpoint again, on a session the other side
    forgot, to a new handshake, or None within ``limit_s``."""
    with _pair(lab, 6) as pair:
        kicker_wg, other_wg, kicker, kicker_key = pair.kicker_wg, pair.other_wg, pair.kicker, pair.kicker_key
        endpoint = f"{lab.host('alice').public_ip}:{PORT}"
        peer_args = (pair.other_key.public_key, endpoint, [f"{pair.ips[1]}/32"], 25)
        other_wg.configure_peer(kicker_key.public_key, None, [f"{pair.ips[0]}/32"], keepalive_s=0)
        kicker.configure_peer(*peer_args)
        lab.wait_for(lambda: (kicker_wg.peer_stats()[pair.other_key.public_key].last_handshake or 0) > 0, 5.0,
                     interval_s=0.05, what="the first handshake")
        time.sleep(1.1)  # older than a session_fresh_s of 1 s
        other_wg.remove_peer(kicker_key.public_key)  # the session is gone on the other side
        other_wg.configure_peer(kicker_key.public_key, None, [f"{pair.ips[0]}/32"], keepalive_s=0)
        kicker.session_fresh_s = session_fresh_s
        started, since = time.monotonic(), time.time()
        kicker.configure_peer(*peer_args)
        return pair.handshake_after(started, since, limit_s)


def test_a_stale_session_configured_again_is_kicked(lab: Lab) -> None:
    took = _stale_handshake_after(lab, session_fresh_s=1.0, limit_s=4.0)
    assert took is not None, "no handshake within 4 s: the stale session was not kicked"
    assert took < UapiWireGuard.STAGGER_S + UapiWireGuard.KICK_AFTER_S + 1.0


def test_a_session_taken_for_fresh_is_not_kicked(lab: Lab) -> None:
    """The control: the same set-up, the session taken for live (no kick), has no handshake."""
    assert _stale_handshake_after(lab, session_fresh_s=3600.0, limit_s=3.0) is None
