"""Settings from the command line and a TOML file: every flag is also a key in the file.

Precedence: a flag given on the command line (or its environment variable), then the
file, then the default. The file has one table per command, keys named like the
flags with dashes or underscores::

    [serve]
    control = "ws://203.0.113.10:8667"
    api-listen = "127.0.0.1:8666"
    log-format = "json"

    [control-server]
    listen = "0.0.0.0:8667"
    relay = ["203.0.113.20:3478", "198.51.100.20:3478"]
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from commands.common import UsageError

if TYPE_CHECKING:
    import click


CONFIG_NAME = "lanrage.toml"
_NOT_SETTABLE = {"config", "help"}


def find_config(explicit: Path | None, state_dir: Path) -> Path | None:
    if explicit is not None:
        if not explicit.expanduser().is_file():
            raise UsageError(f"config file {explicit} does not exist")
        return explicit.expanduser()
    default = state_dir.expanduser() / CONFIG_NAME
    return default if default.is_file() else None


def read_config(path: Path) -> str:
    """The file's text; as root, only from a file root owns and only root can write.

    Started as root, ``serve`` sets up (creates the account, chowns the state directory and the
    log file) from these settings: a file the unprivileged account could write would let it
    steer root (``log-file`` or ``state-dir`` pointing at any path). The file is opened without
    following a symlink and checked on the descriptor that is read.
    """
    if os.geteuid() != 0:
        return path.read_text()
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise UsageError(f"config file {path} is not safe for root: it is a symlink; name the file itself "
                         "(owned by root, writable by root only)") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise UsageError(f"config file {path} is not safe for root: it must be a regular file owned by "
                             f"root and writable by root only (it is uid {info.st_uid}, mode "
                             f"{stat.S_IMODE(info.st_mode):04o}); fix it with `chown root: {path} && "
                             f"chmod 600 {path}`, or start without it")
        return handle.read().decode()


def load_table(path: Path, section: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(read_config(path))
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read config file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise UsageError(f"[{section}] in {path} must be a table")
    return {key.replace("-", "_"): value for key, value in table.items()}


def apply_file(ctx: click.Context, values: dict[str, Any], path: Path | None, section: str) -> dict[str, Any]:
    """``values`` (the command's parameters) with the file's settings where no flag was given."""
    if path is None:
        return values
    table = load_table(path, section)
    # Keys are the long flag names (state-dir), whatever the Python parameter is called.
    params = {opt[2:].replace("-", "_"): param for param in ctx.command.params if param.name
              for opt in param.opts if opt.startswith("--")}
    merged = dict(values)
    for key, raw in table.items():
        param = params.get(key)
        if param is None or key in _NOT_SETTABLE or param.name is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in params if k not in _NOT_SETTABLE))
            raise UsageError(f"unknown setting {key.replace('_', '-')!r} in [{section}] of {path} "
                             f"(known: {known})")
        source = ctx.get_parameter_source(param.name)
        # By name: typer vendors its own copy of click, with its own enum.
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            continue
        try:
            if getattr(param, "multiple", False):
                raw = tuple(raw) if isinstance(raw, list) else (raw,)
            merged[param.name] = param.process_value(ctx, raw)
        except Exception as error:  # click's BadParameter (from typer's vendored click) and friends
            message = getattr(error, "message", None) or str(error)
            raise UsageError(f"{key.replace('_', '-')} in [{section}] of {path}: {message}") from None
    return merged
