"""Findings 4 and 5: root reads nothing the unprivileged account can write, and a ``serve`` that
cannot become the account keeps only CAP_NET_ADMIN and CAP_NET_RAW (run as root, like the suite)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.privileges import DEFAULT_USER, PrivilegeError, account, capabilities, check_state_dir, own
from tests.e2e.harness import CLI, PYTHON, ROOT, Run
from tests.security.test_privileges import KEPT_MASK, reachable_python, serve, uid_of


def test_serve_that_cannot_drop_keeps_only_net_admin_and_net_raw(require_root: None, tmp_path: Path) -> None:
    owner = account(DEFAULT_USER)
    python, env = reachable_python(owner)
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)  # the account cannot reach a state directory in here
    with Run(tmp_path) as run:
        process = serve(run, "boxed", hidden / "state", python, env)  # its API and actors answer
        for pid in {process.pid, *run.ours()}:
            assert uid_of(pid) == 0
            caps = capabilities(pid)
            for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
                assert caps[name] == KEPT_MASK, (pid, name, hex(caps[name]))
        said = [line for line in run.log("boxed").read_text().splitlines() if "staying root" in line]
        assert len(said) == 1 and "only CAP_NET_ADMIN and CAP_NET_RAW" in said[0], said


def serve_once(state: Path, run: Run) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, CLI, "serve", "--adapters", "sim", "--state-dir", str(state),
                           "--api-listen", "127.0.0.1:0"], capture_output=True, text=True, env=run.env,
                          cwd=ROOT, timeout=60)


@pytest.mark.parametrize("plant", ["owned by the account", "writable by others", "a symlink"])
def test_root_refuses_a_config_file_the_account_could_write(require_root: None, tmp_path: Path,
                                                            plant: str) -> None:
    owner = account(DEFAULT_USER)
    target = tmp_path / "root-only"
    target.write_text("root's\n")
    os.chmod(target, 0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = state / "lanrage.toml"
    text = f'[serve]\nlog-file = "{target}"\n'
    if plant == "a symlink":
        real = tmp_path / "real.toml"
        real.write_text(text)
        os.chmod(real, 0o600)
        config.symlink_to(real)
    else:
        config.write_text(text)
        os.chmod(config, 0o600 if plant == "owned by the account" else 0o666)
        if plant == "owned by the account":
            os.chown(config, owner.uid, owner.gid)
    with Run(tmp_path) as run:
        done = serve_once(state, run)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not safe for root" in lines[0] and str(config) in lines[0], done.stderr
    assert target.stat().st_uid == 0 and target.read_text() == "root's\n"


def test_root_chowns_no_hard_link_and_keeps_its_config(require_root: None, tmp_path: Path) -> None:
    owner = account(DEFAULT_USER)
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "node-id").write_text("n1\n")
    os.link(victim, state / "planted")  # what the account could leave in its own directory
    (state / "lanrage.toml").write_text("[serve]\n")
    own([state], owner)
    assert victim.stat().st_uid == 0
    assert (state / "lanrage.toml").stat().st_uid == 0
    assert (state / "node-id").stat().st_uid == owner.uid and state.stat().st_uid == owner.uid


def test_root_checks_the_state_directory_before_using_it(require_root: None, tmp_path: Path) -> None:
    owner = account(DEFAULT_USER)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    for bad in (shared, link):
        with pytest.raises(PrivilegeError, match="state directory"):
            check_state_dir(bad, owner)
    fine = tmp_path / "fine"
    fine.mkdir(mode=0o700)
    check_state_dir(fine, owner)
