"""Property: a connection restarted at any step decides what it would have decided without
the restart, and what the live actors hold equals the fold of what they stored.

Two nodes run the same random scenario on two simulated networks (the same seeded loss):
one is never restarted, the other is restarted at random steps (its connection actor, or
its party actor with it, each a clean stop; its parent starts it again). After every step
both hold what their logs fold to, and their connection streams, without the restarts' own
records, are the same (the metric figures aside: a stop writes the samples its run counted
so far, as it always did)."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thespian.actors import ActorExitRequest

import mesh.sim as sim
from actors import messages as m
from events import types as ev
from events.fold import ConnectionState, apply_connection, fold_stream
from events.streams import METRICS, PEER
from tests.actors.conftest import BOB, RELAY_A, VirtualClock, describe, make_config
from tests.actors.conftest import Node as Harness

BOB_IP = "10.66.0.2"
RESTART_RECORDS = ("ActorRestarted(", "DecisionInputsRecorded(")

steps = st.one_of(
    st.tuples(st.just("latency"), st.sampled_from([20.0, 20.0, 150.0, 250.0, 450.0])),
    st.tuples(st.just("loss"), st.sampled_from([0.0, 0.2, 0.5])),
    st.tuples(st.just("block"), st.booleans()),
    st.tuples(st.just("relay"), st.sampled_from([40.0, None])),
    st.tuples(st.just("offer"), st.booleans()),
    st.tuples(st.just("announce"), st.booleans()),
    st.tuples(st.just("advance"), st.integers(1, 24).map(lambda n: n * 2.5)),
    st.tuples(st.just("advance"), st.integers(24, 60).map(lambda n: n * 2.5)),  # long enough to fail
    st.tuples(st.just("restart"), st.sampled_from(("peer", "party"))),
)
# Whether bob announces a direct candidate, whether the relay answers, the direct round trip,
# and the steps.
scenario = st.tuples(st.booleans(), st.booleans(), st.sampled_from([20.0, 20.0, 250.0]),
                     st.lists(steps, min_size=4, max_size=16))

# The states and paths the generated runs reach, for the shares printed at the end.
REACHED: Counter[str] = Counter()
RUNS: list[int] = [0]


def apply_step(node: Harness, step: tuple[Any, ...], restarts: bool) -> None:
    match step:
        case ("latency", value):
            node.net.set_latency(BOB_IP, value)
        case ("loss", value):
            node.net.loss = value
        case ("block", blocked):
            (node.net.block if blocked else node.net.unblock)(BOB)
        case ("relay", value):
            node.net.set_relay(RELAY_A, value)
        case ("offer", moved):
            node.tell(m.PeerAskedForRelay("p1", "bob", "s-moved" if moved else None, RELAY_A))
        case ("announce", direct):
            node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,) if direct else ()))
        case ("advance", seconds):
            node.advance(seconds, step=2.5)
        case ("restart", what) if restarts:
            party = dict(node.system.ask(node.address, m.ChildrenQuery()).children)["p1"]
            target = party if what == "party" else \
                dict(node.system.ask(party, m.ChildrenQuery()).children).get("bob")
            if target is not None:
                node.system.tell(target, ActorExitRequest())
    node.ask(m.Ping())


def replayed(node: Harness) -> ConnectionState:
    stream = node.peer("bob")
    samples = METRICS + stream[len(PEER):]
    return fold_stream(apply_connection, ConnectionState(),
                       [r.event for r in node.recorder.read_all() if r.stream_id in (stream, samples)])


def decisions(node: Harness, counts: bool = True) -> list[str]:
    """The connection's stream without the restarts' own records, a run of failed direct retries
    as its total count (a stop writes what a run counted so far, and the run goes on), or
    without the counts (a run not yet written is in memory only)."""
    lines: list[str] = []
    for event in node.events(node.peer("bob")):
        if isinstance(event, ev.DirectPathRetriesRepeated):
            if not counts:
                continue
            counted = lines[-1].startswith("counted ") if lines else False
            before = int(lines.pop().split()[1]) if counted else 0
            lines.append(f"counted {before + event.count} {event.reason}")
        elif not describe(event).startswith(RESTART_RECORDS):
            # The figure a switch records of the path it leaves is the last metric sample's, and
            # a stop writes the samples its run counted so far: a measurement, not a decision.
            lines.append(re.sub(r"from_latency_ms=[0-9.]+|from_latency_ms=None", "from_latency_ms=~",
                                describe(event)))
    return lines


def start(clock: VirtualClock) -> Harness:
    name = f"r{uuid.uuid4().hex[:10]}"
    sim.reset(name)
    return Harness(name, clock, make_config(metrics_interval_s=60.0), (RELAY_A,)).start()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=scenario)
def check_restarts_change_no_decision(monkeypatch: Any,
                                      script: tuple[bool, bool, float, list[tuple[Any, ...]]]) -> None:
    direct, relay_up, latency, steps_ = script
    clock = VirtualClock(monkeypatch)
    reference, node = start(clock), start(clock)
    nodes = (reference, node)
    try:
        for harness in nodes:
            harness.net.set_relay(RELAY_A, 40.0 if relay_up else None)
            harness.net.set_latency(BOB_IP, latency)
            harness.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
            harness.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,) if direct else ()))
            harness.ask(m.Ping())
        seen: set[str] = set()
        for step in steps_:
            # One clock for both: the reference takes the step, the clock goes back, the other
            # takes it (thespian's timers of each node read the same clock).
            began = reference.clock.now
            apply_step(reference, step, restarts=False)
            ended, reference.clock.now = reference.clock.now, began
            apply_step(node, step, restarts=True)
            assert node.clock.now == ended
            for harness in nodes:
                live = harness.connection("p1", "bob")
                assert live == replayed(harness)
                assert live.inputs == replayed(harness).inputs
            assert decisions(node, counts=False) == decisions(reference, counts=False)
            state = reference.connection("p1", "bob")
            seen |= {state.state or "", state.path or ""}
        for harness in nodes:
            harness.stop()  # a clean stop writes what the runs counted
        assert decisions(node) == decisions(reference)
    finally:
        for harness in nodes:
            harness.stop()
    RUNS[0] += 1
    REACHED.update(seen & {"failed", "degraded", "relay", "direct"})


def test_a_restart_at_any_step_changes_no_decision(monkeypatch) -> None:
    REACHED.clear()
    RUNS[0] = 0
    check_restarts_change_no_decision(monkeypatch)
    shares = {kind: REACHED[kind] / RUNS[0] for kind in ("failed", "degraded", "relay", "direct")}
    print("runs reaching each:", ", ".join(f"{kind} {share:.0%}" for kind, share in shares.items()),
          f"({RUNS[0]} runs)")
    assert all(share >= 0.05 for share in shares.values()), shares
