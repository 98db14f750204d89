"""The API bearer token: written by ``serve`` to the state directory (mode 0600), read by the CLI."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"


class TokenError(Exception):
    """No usable token file; the message tells the user what to do."""


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


def write_token(state_dir: Path) -> str:
    """A fresh token, written atomically with mode 0600 (the old one stops working)."""
    token = secrets.token_urlsafe(32)
    path = token_path(state_dir)
    temp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(temp, 0o600)
    os.replace(temp, path)
    return token


def read_token(state_dir: Path) -> str:
    path = token_path(state_dir)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise TokenError(f"no API token in {state_dir}: is `lanrage serve` running with this "
                         "--state-dir?") from None
    except PermissionError:
        raise TokenError(f"cannot read {path}: run as the user that runs `serve`") from None
    if not token:
        raise TokenError(f"{path} is empty: restart `serve` to write a new token")
    return token


def token_matches(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode("utf-8",
                                                                                              "replace"))
