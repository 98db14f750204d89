"""A hostile control server in the lab, a real ``serve`` with wireguard-go: every lie of
``tests/security/test_trust.py`` (public subnets, a default route, addresses outside the
subnet, one address for two keys, escape sequences and forged lines in names) is refused, and
the victim's namespace has no WireGuard interface, no such address and no such route after."""

from __future__ import annotations

import json
import sys

from demo.party import LabParty
from lab import HostSpec, Lab
from tests.e2e.harness import ROOT, wait_for
from tests.security.test_trust import CASES

PORT = 8667


def test_a_hostile_control_server_configures_nothing_on_a_real_node(require_root: None) -> None:
    with Lab.build([HostSpec("victim", "open")], relays=0, stun=False) as lab:
        invites = lab.workdir / "invites.json"
        lab.popen("control", [sys.executable, "-m", "tests.security.hostile_server", "--listen",
                              f"0.0.0.0:{PORT}", "--public", lab.control.public_ip, "--invites",
                              str(invites)], cwd=ROOT)
        wait_for(lambda: invites.exists() and invites.read_text(), 30, "the hostile server's invites")
        party = LabParty(lab)
        party.start_agent("victim")
        interface = lab.host("victim").wg_name
        written = json.loads(invites.read_text())
        for name, _, words in CASES:
            refused = lab.run("victim", [*party.command, "party", "join", written[name], "--state-dir",
                                         party.state("victim")], check=False, cwd=ROOT)
            assert refused.returncode != 0 and words in refused.stderr, (name, refused.stderr)
        assert lab.run("victim", ["wg", "show", interface], check=False).returncode != 0  # never created
        addresses = lab.run("victim", ["ip", "-4", "-o", "address"]).stdout
        routes = lab.run("victim", ["ip", "-4", "route"]).stdout
        for outside in ("8.8.", "10.66.", "0.0.0.0/0 dev", "10.0.0.0/8"):
            assert outside not in addresses and outside not in routes, (outside, addresses, routes)
        assert party.status("victim")["parties"] == []
        log = party.agents["victim"].output()
        assert "\x1b" not in log and "refused the party" in log
