"""Retries: when a failed connection tries again, which of its retries are written, and
whether a hole punch is worth trying at all. Pure functions of their arguments."""

from __future__ import annotations

import random

from actors.config import ConnectionConfig
from events import types as ev
from events.fold import ConnectionState
from mesh.nat.punch import should_try_direct


def retry_delay(actor: str, retry: int, cfg: ConnectionConfig) -> float:
    """Capped exponential backoff, jittered per peer and retry (deterministic for replays and tests)."""
    base = min(cfg.retry_backoff_s * 2 ** min(retry, 30), cfg.retry_backoff_max_s)
    spread = random.Random(f"{actor}/{retry}").uniform(-cfg.retry_jitter, cfg.retry_jitter)
    return min(base * (1 + spread), cfg.retry_backoff_max_s)


def written(retry: int) -> bool:
    """Retries 1, 2, 4, 8 ... write their intent and outcome; the attempt number on the next
    written one counts the rest."""
    return retry & (retry - 1) == 0


def direct_ruled_out(local_nat_type: str, state: ConnectionState) -> str | None:
    """Why a punch is not worth trying, or None: always try direct unless both are symmetric."""
    if not state.candidates:
        return "no direct candidates"
    if not should_try_direct(local_nat_type, state.remote_nat_type):
        return "both sides are behind symmetric NATs"
    return None


def direct_likely(local_nat_type: str, state: ConnectionState) -> bool:
    """One side open or port-forwarded: the punch all but always works (the NAT matrix)."""
    easy = (ev.NAT_OPEN, ev.NAT_FULL_CONE)
    return local_nat_type in easy or state.remote_nat_type in easy
