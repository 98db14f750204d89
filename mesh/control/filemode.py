"""File-based discovery: a party on one machine or one LAN share, without a server.

Layout under the discovery directory (mode 0700)::

    <party_id>/party.json                  name, host, subnet, salted hash of the secret
    <party_id>/members/<peer_id>.json      name, public key, virtual IP, NAT, candidates, seen
    <party_id>/signals/<peer_id>/*.json    signals waiting for that peer
    <party_id>/.lock                       flock held while allocating addresses

Whoever can write the directory is trusted (there is no key proof here); joining
still needs the secret from the invite. Files are written atomically (temp file and
rename). ``poll()`` turns what changed since the last poll into the same pushes the
control server sends: ``peer_joined``, ``peer_left``, ``peer_updated``, ``signal``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from events import types as ev
from mesh.control import registry as reg
from mesh.control.client import ControlError
from mesh.control.identity import Identity
from mesh.control.secrets_hash import check_secret, hash_secret, new_secret

Message = dict[str, Any]
# A party or peer id names a directory or a file: never "." or "..", never hidden.
_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\Z")
MAX_FILE_BYTES = 64 * 1024  # a member or party file is a few hundred bytes
MAX_MEMBERS = 1024  # member files read per poll: a LAN party is far smaller


def _write(path: Path, body: Message) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_text(json.dumps(body, sort_keys=True))
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def _read(path: Path) -> Message | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None
        body = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _member_ok(member: Message) -> bool:
    """A member file that the pushes can carry as is: the right types, bounded sizes."""
    seen = member.get("seen", 0)
    candidates = member.get("candidates", [])
    return (isinstance(member.get("peer_id"), str) and bool(_ID.match(member["peer_id"]))
            and all(isinstance(member.get(key, ""), str) and len(member.get(key, "")) <= 256
                    for key in ("name", "public_key", "virtual_ip", "nat_type"))
            and isinstance(seen, int | float) and not isinstance(seen, bool) and seen == seen
            and isinstance(candidates, list) and len(candidates) <= 16
            and all(isinstance(c, str) and len(c) <= 64 for c in candidates))


class FileDiscovery:
    def __init__(self, directory: Path | str, identity: Identity, *, name: str = "node",
                 ttl_s: float = 15.0, poll_s: float = 0.5) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.identity = identity
        self.name = name
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.pushes: queue.Queue[Message] = queue.Queue()
        self._nat_type = ev.NAT_UNKNOWN
        self._candidates: list[str] = []
        self._parties: set[str] = set()
        self._seen: dict[str, dict[str, Message]] = {}  # party -> peer -> member, as last polled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def url(self) -> str:
        return self.directory.resolve().as_uri()

    # ------------------------------------------------------------ requests

    def create_party(self, name: str) -> Message:
        party_id = os.urandom(8).hex()
        secret = new_secret()
        with self._locked(party_id):
            _write(self._party_dir(party_id) / "party.json", {
                "party_id": party_id, "name": name, "host_peer_id": self.peer_id,
                "subnet": reg.DEFAULT_SUBNET, "secret_hash": hash_secret(secret)})
            self._admit(party_id)
        return {"type": "party_created", "party": self._snapshot(party_id), "secret": secret}

    def join_party(self, party_id: str, secret: str) -> Message:
        party = self._party(party_id)
        if not secret or not check_secret(secret, str(party.get("secret_hash", ""))):
            raise ControlError("forbidden", "missing party secret" if not secret else "wrong party secret")
        with self._locked(party_id):
            self._admit(party_id)
        return {"type": "party_joined", "party": self._snapshot(party_id)}

    def leave_party(self, party_id: str) -> Message:
        self._party(party_id)
        with contextlib.suppress(FileNotFoundError):
            (self._party_dir(party_id) / "members" / f"{self.peer_id}.json").unlink()
        self._parties.discard(party_id)
        self._seen.pop(party_id, None)
        return {"type": "party_left", "party_id": party_id}

    def announce(self, nat_type: str, candidates: list[str]) -> Message:
        self._nat_type, self._candidates = nat_type, list(candidates)
        self.heartbeat()
        return {"type": "announced"}

    def signal(self, party_id: str, to: str, payload: Message) -> Message:
        if not _ID.match(to) or not (self._party_dir(party_id) / "members" / f"{to}.json").exists():
            raise ControlError("not_member", f"{to} is not a member of party {party_id}")
        _write(self._party_dir(party_id) / "signals" / to / f"{time.time_ns()}-{self.peer_id}.json",
               {"party_id": party_id, "from": self.peer_id, "payload": payload})
        return {"type": "signal_sent", "to": to}

    def heartbeat(self) -> None:
        for party_id in list(self._parties):
            path = self._party_dir(party_id) / "members" / f"{self.peer_id}.json"
            member = _read(path)
            if member is not None:
                member.update(seen=time.time(), nat_type=self._nat_type, candidates=self._candidates)
                _write(path, member)

    def poll(self) -> list[Message]:
        """What changed since the last poll, as pushes (also put on ``pushes``)."""
        pushes: list[Message] = []
        for party_id in list(self._parties):
            now = {m["peer_id"]: m for m in self._members(party_id) if m["peer_id"] != self.peer_id}
            before = self._seen.get(party_id, {})
            for peer_id, member in now.items():
                if peer_id not in before:
                    pushes.append({"type": "peer_joined", "party_id": party_id, "member": member})
                elif member != before[peer_id]:
                    pushes.append({"type": "peer_updated", "party_id": party_id, "member": member})
            pushes.extend({"type": "peer_left", "party_id": party_id, "peer_id": peer_id, "reason": "left"}
                          for peer_id in before.keys() - now.keys())
            self._seen[party_id] = now
            pushes.extend(self._take_signals(party_id))
        for push in pushes:
            self.pushes.put(push)
        return pushes

    # ------------------------------------------------------------ background

    def start(self) -> FileDiscovery:
        self._thread = threading.Thread(target=self._loop, name="lanrage-file-discovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(self.poll_s):
            if time.monotonic() - last_beat > self.ttl_s / 3:
                self.heartbeat()
                last_beat = time.monotonic()
            self.poll()

    # ------------------------------------------------------------ internals

    def _party_dir(self, party_id: str) -> Path:
        if not _ID.match(party_id):
            raise ControlError("bad_message", f"{party_id[:64]!r} is not a party id")
        return self.directory / party_id

    def _party(self, party_id: str) -> Message:
        party = _read(self._party_dir(party_id) / "party.json")
        if party is None:
            raise ControlError("not_found", f"no party {party_id} in {self.directory}")
        return party

    @contextlib.contextmanager
    def _locked(self, party_id: str) -> Iterator[None]:
        directory = self._party_dir(party_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _admit(self, party_id: str) -> None:
        path = self._party_dir(party_id) / "members" / f"{self.peer_id}.json"
        existing = _read(path)
        if existing is None:
            party = self._party(party_id)
            taken = tuple(reg.Member(m["peer_id"], m["public_key"], m["virtual_ip"])
                          for m in self._members(party_id, online_only=False))
            address = reg.next_virtual_ip(reg.Party(party_id, "", "", subnet=party["subnet"], members=taken))
            existing = {"peer_id": self.peer_id, "name": self.name, "public_key": self.identity.public_key,
                        "virtual_ip": address}
        existing.update(seen=time.time(), nat_type=self._nat_type, candidates=self._candidates)
        _write(path, existing)
        self._parties.add(party_id)
        self._seen.setdefault(party_id, {})

    def _members(self, party_id: str, online_only: bool = False) -> list[Message]:
        members = []
        for path in sorted((self._party_dir(party_id) / "members").glob("*.json"))[:MAX_MEMBERS]:
            member = _read(path)
            if member is None or not _member_ok(member):
                continue  # anyone who can write the directory can write junk: skip it, never fail
            online = time.time() - float(member.get("seen", 0)) < self.ttl_s
            if online_only and not online:
                continue
            members.append({"peer_id": member["peer_id"], "name": member.get("name", ""),
                            "public_key": member.get("public_key", ""),
                            "virtual_ip": member.get("virtual_ip", ""), "online": online,
                            "nat_type": member.get("nat_type", ev.NAT_UNKNOWN),
                            "candidates": list(member.get("candidates", []))})
        return members

    def _snapshot(self, party_id: str) -> Message:
        party = self._party(party_id)
        if not all(isinstance(party.get(key), str) for key in ("name", "host_peer_id", "subnet")):
            raise ControlError("bad_message", f"the party file of {party_id} in {self.directory} is damaged")
        return {"party_id": party_id, "name": party["name"], "host_peer_id": party["host_peer_id"],
                "subnet": party["subnet"], "members": self._members(party_id)}

    def _take_signals(self, party_id: str) -> list[Message]:
        box = self._party_dir(party_id) / "signals" / self.peer_id
        signals = []
        for path in sorted(box.glob("*.json")) if box.is_dir() else []:
            body = _read(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if body is not None:
                signals.append({"type": "signal", "party_id": party_id, "from": body.get("from"),
                                "payload": body.get("payload", {})})
        return signals
