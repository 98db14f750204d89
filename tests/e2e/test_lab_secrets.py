"""After a full lab run, no secret is anywhere it should not be.

One lab (three peers behind a port-restricted, a port-forwarded and a symmetric NAT, a
control server and two relays), one party, every pair pinging, one peer over a relay.
Then every database, log and state file of every process, every `status` output and
every API answer is searched for the private keys, the party secret, the API tokens,
the relay secret, the control server's key and the relay ticket keys: zero hits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from demo.party import LabParty
from events.types import RelaySessionAllocated
from lab import HostSpec, Lab
from mesh.control.invite import Invite
from mesh.relay.tickets import DEFAULT_TTL_S, side_key
from store import open_store
from tests.e2e.test_lab import every_pair_pings

pytestmark = pytest.mark.lab

# The files that are the secrets' one home (mode 0600): everything else must not hold them.
SECRET_HOMES = {"wireguard.key", "api-token", "control.key", "control-cert.key", "relay.secret"}
TICKET_ISSUE_WINDOW_S = 600  # a ticket is issued at most this long before its session is first used

API_DUMP = """
import httpx, json, sys
token = open(sys.argv[1] + "/api-token").read().strip()
headers = {"Authorization": "Bearer " + token}
out = {}
for path in ("/", "/openapi.json", "/status", "/api/metrics/summary", "/api/metrics/peers",
             "/api/events?limit=1000", "/metrics"):
    out[path] = httpx.get("http://127.0.0.1:8666" + path, headers=headers, timeout=10).text
for peer in json.loads(out["/api/metrics/peers"]):
    for path in (f"/api/metrics/peers/{peer['peer_id']}", f"/api/peers/{peer['peer_id']}/history"):
        out[path] = httpx.get("http://127.0.0.1:8666" + path, headers=headers, timeout=10).text
print(json.dumps(out))
"""


@pytest.fixture
def party(require_root: None) -> Iterator[LabParty]:
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
             HostSpec("carl", "symmetric")]
    with Lab.build(hosts=hosts, relays=2) as lab:
        lab_party = LabParty(lab)
        lab_party.start_services()
        lab_party.start_agents([h.name for h in hosts])
        yield lab_party


def forms(secret: str) -> set[str]:
    """The ways a secret could be written: as is, and its base64 as hex (and back)."""
    found = {secret}
    with contextlib.suppress(ValueError):
        found.add(base64.b64decode(secret, validate=True).hex())
    with contextlib.suppress(ValueError):
        found.add(base64.b64encode(bytes.fromhex(secret)).decode())
    return {form for form in found if len(form) >= 16}


def ticket_keys(relay_secret: bytes, relay_dbs: list[Path]) -> set[str]:
    """Every key a ticket of a session these relays saw could have had (expiry from its issue window)."""
    keys: set[str] = set()
    for db in relay_dbs:
        store = open_store(f"sqlite:///{db}")
        try:
            for record in store.read_all():
                event = record.event
                if not isinstance(event, RelaySessionAllocated):
                    continue
                at = record.recorded_at
                used = int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())
                for issued in range(used - TICKET_ISSUE_WINDOW_S, used + 2):
                    for side in (0, 1):
                        keys.add(side_key(relay_secret, event.session_id, event.party_id, event.peer_a,
                                          event.peer_b, issued + DEFAULT_TTL_S, side).hex())
        finally:
            store.close()
    return keys


def test_no_secret_in_any_database_log_status_or_api_answer(party: LabParty) -> None:
    created = party.create("alice", "LAN")
    ips = {"alice": created["virtual_ip"]}
    for guest in ("bob", "carl"):
        ips[guest] = party.join(guest, created["invite"])["virtual_ip"]
    assert every_pair_pings(party, ips, 90) == set()
    paths = {p["name"]: p["path"] for p in party.status("alice")["parties"][0]["peers"]}
    assert paths["carl"] == "relay"  # a relay session, so ticket keys exist

    hosts = ["alice", "bob", "carl"]
    outputs = {f"{host} status": party.cli(host, "status", "--json", "--state-dir", party.state(host))
               for host in hosts}
    for host in hosts:
        dump = party.lab.run(host, [sys.executable, "-c", API_DUMP, party.state(host)]).stdout
        for path, text in json.loads(dump).items():
            outputs[f"{host} GET {path}"] = text

    workdir = Path(party.dir)
    relay_secret = bytes.fromhex(party.secret_file.read_text().strip())
    secrets: dict[str, set[str]] = {"party secret": forms(Invite.decode(created["invite"]).secret),
                                    "relay secret": forms(relay_secret.hex())}
    for home in SECRET_HOMES - {"relay.secret", "control-cert.key"}:
        for path in workdir.rglob(home):
            secrets[f"{path.relative_to(workdir)}"] = forms(path.read_text().strip())
    assert sum(1 for name in secrets if name.endswith("wireguard.key")) == 3
    assert sum(1 for name in secrets if name.endswith("api-token")) == 3
    relay_dbs = [p for p in workdir.rglob("*.db") if p.parent.name.startswith("relay")]
    secrets["ticket keys"] = ticket_keys(relay_secret, relay_dbs)
    assert secrets["ticket keys"]

    haystacks: dict[str, str] = dict(outputs)
    for path in workdir.rglob("*"):
        if path.is_file() and path.name not in SECRET_HOMES:
            haystacks[str(path.relative_to(workdir))] = path.read_bytes().decode("latin-1")
    assert any(name.endswith(".db") for name in haystacks)
    assert any(name.endswith(".log") for name in haystacks)
    hits = [(what, where) for what, values in secrets.items() for where, text in haystacks.items()
            if any(value in text for value in values)]
    assert hits == [], hits
    print(f"searched {len(haystacks)} files and answers for {sum(map(len, secrets.values()))} secret forms: "
          "no hit")
