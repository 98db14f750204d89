"""``lab up/down/list/exec``: the network lab for people (see ``lab`` and docs/lab.md)."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from commands.common import UsageError

lab_app = typer.Typer(help="A small internet of network namespaces with NAT routers (needs root).",
                      no_args_is_help=True)

HostsOption = Annotated[
    list[str] | None,
    typer.Option("--host", "-H", help="NAME[:NAT][@LAN] (NAT: open, port_forwarded, port_restricted, "
                                      "symmetric; hosts with the same @LAN share a router); repeat for more "
                                      "hosts [default: alice and bob, port_restricted]."),
]


def _parse_host(text: str) -> object:
    from lab import NAT_TYPES, HostSpec

    text, _, lan = text.partition("@")
    name, _, nat = text.partition(":")
    nat = nat.replace("-", "_") or "port_restricted"
    if nat not in NAT_TYPES:
        raise UsageError(f"unknown NAT type {nat!r} in --host {text!r}: use one of {', '.join(NAT_TYPES)}")
    return HostSpec(name, nat, lan=lan or None)


@lab_app.command("up")
def up(hosts: HostsOption = None,
       relays: Annotated[int, typer.Option(help="Number of relay hosts.")] = 2) -> None:
    """Build a lab that persists until `lab down RUN_ID`."""
    from lab import Lab, LabError

    specs = [_parse_host(text) for text in (hosts or ["alice", "bob"])]
    try:
        lab = Lab.build(specs, relays=relays, persistent=True)  # type: ignore[arg-type]
    except LabError as error:
        raise UsageError(str(error)) from None
    print(lab.describe())
    print(f"run `lanrage lab exec {lab.run_id} HOST -- CMD` to use it, "
          f"`lanrage lab down {lab.run_id}` to remove it")


@lab_app.command("down")
def down(run_ids: Annotated[list[str], typer.Argument(help="Run ids (see `lab list`).")]) -> None:
    """Remove persistent labs by run id (and any leftover of a dead run)."""
    from lab import Lab, LabError, cleanup_leftovers, registry

    for run_id in run_ids:
        record = registry.load(run_id)
        if record is not None and not record.persistent and record.owner_alive:
            raise UsageError(f"lab {run_id} belongs to running process {record.owner_pid}; not removing it")
        try:
            Lab.attach(run_id).teardown()
        except LabError as error:
            raise UsageError(str(error)) from None
        print(f"removed lab {run_id}")
    for run_id in cleanup_leftovers():
        print(f"removed leftover lab {run_id}")


@lab_app.command("list")
def list_() -> None:
    """Every lab on this machine: run id, owner, hosts."""
    from lab import registry

    records = registry.all_records()
    if not records:
        print("no labs")
    for record in records:
        kind = "persistent" if record.persistent else (
            f"pid {record.owner_pid}" + ("" if record.owner_alive else " (dead: leftover)"))
        hosts = ", ".join(sorted(record.topology.get("hosts", {})))
        age = time.time() - record.created_at
        print(f"{record.run_id}  {kind:<28} {age:7.0f}s  {hosts}")


@lab_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Run id.")],
          host: Annotated[str, typer.Argument(help="Host name.")]) -> None:
    """Run a command in a lab host: `lab exec RUN_ID HOST -- CMD ARGS…`."""
    from lab import Lab, LabError

    if not ctx.args:
        raise UsageError("give the command after `--`")
    try:
        lab = Lab.attach(run_id)
        argv = lab.argv(host, ctx.args)
    except LabError as error:
        raise UsageError(str(error)) from None
    os.execvpe(argv[0], argv, lab.env())


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
