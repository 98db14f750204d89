"""Fuzzing every decoder that reads the network or the disk, with atheris (libFuzzer).

    .venv/bin/python bench/fuzz.py [--runs 1000000] [--only stun,relay] [--seed-corpus]

Targets (each gets an equal share of ``--runs``, in its own process):

    stun       mesh.nat.stun_wire.parse_response, and the canonical form of what it accepts
    relay      every mesh.relay.wire parser, then the real RelayServer's control path
    punch      mesh.nat.punch.decode, with random and with valid MACs
    control    mesh.control.protocol.parse_request (what a node sends the server)
    broadcast  mesh.broadcast.wire.decode and mesh.broadcast.packet.parse_ipv4_udp
    invite     mesh.control.invite.Invite.decode, raw and behind the lanrage1- prefix
    events     store.codec.RowDecoder on every event type (rows read back from the store)
    discovery  mesh.control.filemode member and party files (a shared directory)
    accept     what a control server sends a node: the control client's frame decoder, then the
               party and member checks (mesh.control.accept: check_party, check_member,
               check_disjoint), members' keys and candidates, and account items; on raw JSON and
               on a valid party with one field replaced
    packets    mesh.wireguard.probe.parse_reply (ICMP through a tunnel) and
               mesh.nat.rawudp.parse_ip_udp (raw IPv4/UDP on WireGuard's port)

A decoder may only return its "no" (None) or raise its own documented error; any other
exception is a crash. Each worker runs under libFuzzer with a per-input timeout
(``-timeout``, a hang) and an RSS limit (``-rss_limit_mb``, unbounded memory); either
one fails the run. Seeds come from bench/corpus/<target>/ (small, in the repository);
what libFuzzer finds goes to a temporary directory and is thrown away. Prints the
inputs run per decoder and in total; exits 1 on any crash, hang, memory blow-up or
shortfall.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"
TARGETS = ("stun", "relay", "punch", "control", "broadcast", "invite", "events", "discovery", "accept",
           "packets")
RSS_LIMIT_MB = 1024  # a worker holds ~150 MB; ten times what a parser should ever need
INPUT_TIMEOUT_S = 10  # one input: the slowest decoder takes well under a millisecond
MAX_LEN = 4096  # above every datagram and file these decoders accept

sys.path.insert(0, str(ROOT))


def build(name: str) -> Callable[[bytes], None]:
    """The one-input function of target ``name`` (imports instrumented by the caller)."""
    import atheris

    if name == "stun":
        from mesh.nat import stun_wire

        def stun(data: bytes) -> None:
            response = stun_wire.parse_response(data)
            if response is not None:
                assert stun_wire.parse_response(stun_wire.canonical(response)) is not None
        return stun

    if name == "relay":
        import socket

        from mesh.relay import wire
        from mesh.relay.server import Counters, RelayServer

        relay = RelayServer(b"fuzzing-secret-0123456789", ("127.0.0.1", 0))
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))  # answers go here and are never read: the kernel drops them
        sink_addr = sink.getsockname()
        counters = Counters()

        def relay_target(data: bytes) -> None:
            for parse in (wire.parse_hello, wire.parse_hello_ok, wire.parse_refused, wire.parse_cookie,
                          wire.parse_revoke, wire.control_type, wire.is_wireguard, wire.is_control):
                parse(data)
            wire.parse_probe(data, wire.PING)
            wire.parse_probe(data, wire.PONG)
            relay._control(data, sink_addr, False, counters)
        return relay_target

    if name == "punch":
        import hmac
        from hashlib import sha256

        from mesh.nat import punch

        key = punch.session_key("fuzz")

        def punch_target(data: bytes) -> None:
            punch.decode(key, data)
            body = (punch.MAGIC + data)[:punch._BODY.size].ljust(punch._BODY.size, b"\0")
            punch.decode(key, body + hmac.new(key, body, sha256).digest()[:16])
        return punch_target

    if name == "control":
        from mesh.control import protocol

        def control(data: bytes) -> None:
            with contextlib.suppress(protocol.ProtocolError):
                protocol.parse_request(data.decode("utf-8", "surrogateescape"))
            with contextlib.suppress(protocol.ProtocolError):
                protocol.parse_request(data)
        return control

    if name == "broadcast":
        from mesh.broadcast import packet
        from mesh.broadcast import wire as bwire

        def broadcast(data: bytes) -> None:
            with contextlib.suppress(bwire.WireError):
                bwire.decode(data, 1400)
            packet.parse_ipv4_udp(data)
        return broadcast

    if name == "invite":
        import base64

        from mesh.control.invite import Invite, InviteError

        def invite(data: bytes) -> None:
            for text in (data.decode("utf-8", "replace"),
                         "lanrage1-" + base64.urlsafe_b64encode(data).decode().rstrip("=")):
                with contextlib.suppress(InviteError):
                    Invite.decode(text)
        return invite

    if name == "events":
        import events  # noqa: F401  (registers every event type)
        from events.base import EventError, registered_types
        from store.codec import RowDecoder

        decoder = RowDecoder()
        types = sorted(registered_types())

        def events_target(data: bytes) -> None:
            provider = atheris.FuzzedDataProvider(data)
            event_type = types[provider.ConsumeIntInRange(0, len(types) - 1)]
            version = provider.ConsumeIntInRange(0, 4)
            with contextlib.suppress(EventError):
                decoder.decode(event_type, version, provider.ConsumeBytes(MAX_LEN))
        return events_target

    if name == "discovery":
        from mesh.control.filemode import FileDiscovery
        from mesh.control.identity import Identity

        # Inside the run's temporary directory, which the parent removes after the worker.
        directory = Path(tempfile.mkdtemp(prefix="discovery-", dir=os.environ.get("LANRAGE_FUZZ_TMP")))
        discovery = FileDiscovery(directory, Identity.generate())
        party = directory / "p1"
        (party / "members").mkdir(parents=True)

        def discovery_target(data: bytes) -> None:
            provider = atheris.FuzzedDataProvider(data)
            (party / "party.json").write_bytes(provider.ConsumeBytes(provider.ConsumeIntInRange(0, 512)))
            (party / "members" / "m.json").write_bytes(provider.ConsumeBytes(MAX_LEN))
            discovery._parties.add("p1")
            discovery._members("p1")
            discovery.poll()
            try:
                discovery._snapshot("p1")
            except Exception as error:  # only the documented refusal
                if type(error).__name__ != "ControlError":
                    raise
        return discovery_target

    if name == "accept":
        return accept_target(atheris)

    if name == "packets":
        from mesh.nat import rawudp
        from mesh.wireguard import probe

        def packets(data: bytes) -> None:
            probe.parse_reply(data)
            provider = atheris.FuzzedDataProvider(data)
            port = provider.ConsumeIntInRange(0, 65535)
            rawudp.parse_ip_udp(provider.ConsumeBytes(MAX_LEN), port)
        return packets

    raise SystemExit(f"unknown target {name}")


VALID_PARTY: dict[str, object] = {
    "party_id": "p1", "name": "LAN", "host_peer_id": "me", "subnet": "10.66.0.0/16",
    "members": [
        {"peer_id": "me", "name": "alice", "public_key": "A" * 43 + "=", "virtual_ip": "10.66.0.1",
         "online": True, "nat_type": "open", "candidates": ["203.0.113.5:51820"], "devices": []},
        {"peer_id": "q", "name": "bob", "public_key": "B" * 43 + "=", "virtual_ip": "10.66.0.2",
         "online": False, "nat_type": "unknown", "candidates": [],
         "devices": [{"device_id": "d1", "name": "console", "public_key": "C" * 43 + "=",
                      "virtual_ip": "10.66.0.3"}]},
    ],
}


def accept_target(atheris: object) -> Callable[[bytes], None]:
    """What a node does with a control server's description of a party, before configuring it."""
    import copy
    import ipaddress
    import json

    from agent.node import _account_item
    from mesh.control.accept import UntrustedParty, check_disjoint, check_member, check_party
    from mesh.control.client import decode_frame
    from mesh.control.identity import IdentityError, decode_key
    from mesh.interfaces import MeshError
    from mesh.nat.punch import parse_candidate

    held = [("10.66.0.9", "D" * 43 + "=", "carol's in party p0")]
    network = ipaddress.IPv4Network("10.66.0.0/16")
    party_fields = sorted(VALID_PARTY)
    member_fields = sorted(VALID_PARTY["members"][1])  # type: ignore[index]

    def described(data: bytes) -> object:
        provider = atheris.FuzzedDataProvider(data)  # type: ignore[attr-defined]
        mode = provider.ConsumeIntInRange(0, 3)
        field_index = provider.ConsumeIntInRange(0, 63)
        raw = provider.ConsumeBytes(MAX_LEN)
        body = decode_frame(raw)  # what the node's control client would make of the frame
        value: object = body
        if body is None:
            try:
                value = json.loads(raw.decode("utf-8", "replace"))
            except (ValueError, RecursionError):
                value = raw.decode("utf-8", "replace")
        if mode == 0:
            return body.get("party", body) if isinstance(body, dict) else value
        party = copy.deepcopy(VALID_PARTY)
        if mode == 1:
            party[party_fields[field_index % len(party_fields)]] = value
        elif mode == 2:
            party["members"][1][member_fields[field_index % len(member_fields)]] = value  # type: ignore[index]
        else:
            party["members"][1]["devices"][0][("device_id", "name", "public_key", "virtual_ip")  # type: ignore[index]
                                              [field_index % 4]] = value
        return party

    def accept(data: bytes) -> None:
        party = described(data)
        with contextlib.suppress(UntrustedParty):
            check_party(party, "me")
            check_disjoint(party, held)  # type: ignore[arg-type]
        members = party.get("members") if isinstance(party, dict) else None
        for member in members[:8] if isinstance(members, list) else ():
            with contextlib.suppress(UntrustedParty):
                check_member(member, network)
            if not isinstance(member, dict):
                continue
            with contextlib.suppress(IdentityError):
                decode_key(str(member.get("public_key")))
            candidates = member.get("candidates")
            for candidate in candidates[:16] if isinstance(candidates, list) else ():
                with contextlib.suppress(MeshError):
                    parse_candidate(str(candidate))
            _account_item(member)  # an account item is an object of the same kind
    return accept


def worker(name: str, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["mesh", "store", "events"]):
        one = build(name)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def seed_corpus() -> None:
    """Write a few valid inputs per target to bench/corpus (run once; the files are kept)."""
    import base64
    import json

    from mesh.broadcast.wire import Wrapped
    from mesh.control.invite import Invite
    from mesh.nat import punch, stun_wire
    from mesh.relay import issue_tickets, wire

    ticket = issue_tickets(b"fuzzing-secret-0123456789", "127.0.0.1:3478", "party", "alice", "bob")[0]
    hello = wire.encode_hello(wire.HELLO, ticket.key, 0, ticket.expiry_s, int(time.time() * 1000), b"n" * 16,
                              ticket.session_id, "party", "alice", "bob")
    ipv4 = bytes.fromhex("4500002c0001000040010000c0000201c0000202")  # 192.0.2.1 -> 192.0.2.2, ICMP
    seeds: dict[str, list[bytes]] = {
        "stun": [stun_wire.encode_response(b"t" * 12, ("203.0.113.5", 51820), ("203.0.113.2", 3478))],
        "relay": [hello, wire.encode_ping(7, 64), wire.encode_cookie(b"n" * 16, b"c" * 16),
                  wire.encode_revoke(b"k" * 32, "s1", 2**40, 1, b"r" * 16), b"\x04\0\0\0" + b"x" * 44],
        "punch": [punch.encode(punch.session_key("fuzz"), punch.PUNCH, 0, b"8bytes!!", 1, 0)],
        "control": [json.dumps(m).encode() for m in (
            {"type": "hello", "v": 1, "public_key": "A" * 43 + "=", "name": "n"},
            {"type": "join_party", "v": 1, "party_id": "p1", "secret": "s"},
            {"type": "announce", "v": 1, "nat_type": "open", "candidates": ["203.0.113.5:51820"]},
            {"type": "signal", "v": 1, "party_id": "p", "to": "q", "payload": {"a": [1, {"b": None}]}})],
        "broadcast": [Wrapped("10.66.0.1", 4445, "255.255.255.255", 4445, 1, b"game").encode()],
        "invite": [base64.urlsafe_b64decode(Invite("ws://203.0.113.10:8667/?key=" + "A" * 43 + "%3D", "p1",
                                                   "LAN", "secret").encode()[9:] + "==")],
        "events": [b"\x05\x01" + json.dumps({"party_id": "p", "peer_id": "q"}).encode()],
        "discovery": [b"\x40" + json.dumps({"name": "n", "host_peer_id": "h", "subnet": "10.66.0.0/16"})
                      .encode().ljust(64) + json.dumps({"peer_id": "m", "seen": 1.0}).encode()],
        "accept": [bytes([mode, field]) + json.dumps(body).encode() for mode, field, body in (
            (0, 0, {"type": "party_joined", "re": "r1", "party": VALID_PARTY}),
            (1, 4, "10.66.0.0/24"), (2, 7, "10.66.0.2"), (2, 5, "bob\u202e"),
            (3, 1, "console"), (0, 0, {"type": "account", "items": [{"kind": "crashed",
                                                                      "started_at": 1.8e9}]}))],
        "packets": [ipv4 + bytes.fromhex("0000ffff12340001") + b"lanrage-probe\0\0\0",  # an echo reply
                    ipv4[:9] + b"\x11" + ipv4[10:] + bytes.fromhex("ca6cca6c00180000") + b"x" * 16],  # UDP
    }
    for name, inputs in seeds.items():
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for index, data in enumerate(inputs):
            (directory / f"seed-{index}").write_bytes(data)
    print(f"wrote {sum(map(len, seeds.values()))} seeds to {CORPUS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs in total, shared by the targets")
    parser.add_argument("--only", default="", help="comma-separated targets (default: all)")
    parser.add_argument("--seed-corpus", action="store_true", help="write the seed corpus and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(args.worker, rest)
        return 0
    if args.seed_corpus:
        seed_corpus()
        return 0
    names = [n for n in args.only.split(",") if n] or list(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    share = -(-args.runs // len(names))
    load_before = [round(x, 2) for x in os.getloadavg()]
    total, failed = 0, []
    print(f"{'decoder':<10} {'inputs':>10} {'seconds':>8}  result")
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"lanrage-fuzz-{name}-") as found:
            command = [sys.executable, __file__, "--worker", name, f"-runs={share}",
                       f"-rss_limit_mb={RSS_LIMIT_MB}", f"-malloc_limit_mb={RSS_LIMIT_MB}",
                       f"-timeout={INPUT_TIMEOUT_S}", f"-max_len={MAX_LEN}", f"-artifact_prefix={found}/",
                       "-print_final_stats=1", found, str(CORPUS / name)]
            start = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "THESPIAN_BASE_IPADDR": "127.0.0.1",
                                       "LANRAGE_FUZZ_TMP": found})
            elapsed = time.monotonic() - start
        match = re.search(r"Done (\d+) runs", done.stderr)
        runs = int(match.group(1)) if match else 0
        ok = done.returncode == 0 and runs >= share
        total += runs
        print(f"{name:<10} {runs:>10} {elapsed:>8.1f}  {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(name)
            tail = [line for line in done.stderr.splitlines() if "Traceback" in line or "Error" in line
                    or "==" in line or "File " in line]
            print("\n".join(tail[-25:]), file=sys.stderr)
    print(f"total {total} inputs over {len(names)} decoders; target >= {args.runs}")
    from bench.result import Figure, emit

    met = not failed and total >= args.runs
    emit("fuzz", [Figure(f"inputs run without a crash, hang or blow-up ({len(names)} decoders)", total,
                         "inputs", None, "", f"≥ {args.runs:,}, no failure", met, 0)], load_before)
    if failed or total < args.runs:
        print(f"MISSED: {', '.join(failed) or 'too few inputs'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
