"""Every threshold the actors use, in one picklable config (defaults from the seed)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConnectionConfig:
    degraded_latency_ms: float = 200.0  # above this a connection is degraded
    lost_probes_before_action: int = 3  # consecutive lost probes before failover or reconnect
    max_reconnect_attempts: int = 3  # then failed
    cleanup_timeout_s: float = 300.0  # failed for this long -> cleanup
    direct_retry_s: float = 30.0  # while on a relay, retry the direct path this often
    probe_interval_s: float = 5.0
    # A connecting connection is probed this soon, so status says "connected" as soon as
    # the tunnel answers rather than a whole probe interval later.
    first_probe_s: float = 0.5
    probe_timeout_s: float = 1.0
    punch_timeout_s: float = 5.0
    # With a relay at hand, put a new connection on it at once and punch behind it (the
    # DERP way): a relayed pair is up within a relay round trip instead of after a failed
    # punch. Skipped when one side is open or port-forwarded: direct is then near certain.
    relay_first: bool = True
    metrics_interval_s: float = 60.0  # one aggregated MetricsSampled per window
    # A change away from a healthy state records this many of the last probe outcomes: at
    # 5 s a probe, the last ~100 s, enough to tell loss that rose from a clean cut (whose
    # lost probes all come at the end), in 20 bytes an event.
    probe_history: int = 20
    keepalive_s: int = 25
    # A WireGuard change that failed is tried again after this, doubling up to the cap:
    # quick enough that a transient failure heals in seconds, bounded so a broken
    # interface costs one attempt (and one event) per half minute, not a busy loop.
    wireguard_retry_s: float = 1.0
    wireguard_retry_max_s: float = 30.0


@dataclass(frozen=True)
class RelayMonitorConfig:
    # Probe often (a dead relay is seen within a second), record seldom: the probes of one
    # record interval become one aggregated RelayProbed per relay, unless a state changes.
    # 0.5 s: a relay's ICMP "port unreachable" is rate-limited per host (1/s after a burst)
    # and a busy tunnel uses it up, so a killed relay can cost two probe timeouts to see.
    probe_interval_s: float = 0.5
    # Per relay and tick. The probes of a round go out at once, so one a tick already finds
    # a dead relay in two ticks (1 s) and gives 60 samples a record interval; more only
    # cost CPU (each is a socket, a worker task and a message).
    probes_per_round: int = 1
    probe_timeout_s: float = 0.5
    record_interval_s: float = 30.0  # one RelayProbed per relay per interval; latency decisions here too
    dead_after_misses: int = 2  # consecutive lost probes: the relay is gone, fail over at once
    degraded_rtt_ms: float = 150.0  # the selected relay is degraded above this (or when silent)
    min_improvement_ms: float = 10.0  # a switch needs at least this much better ...
    max_ratio: float = 2 / 3  # ... and below this fraction of the old relay's rtt


@dataclass(frozen=True)
class ActorConfig:
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    relay_monitor: RelayMonitorConfig = field(default_factory=RelayMonitorConfig)
    status_timeout_s: float = 2.0
    # A crashed child is recreated after this delay, unless its parent is told to exit
    # meanwhile (thespian's shutdown ends children before parents).
    restart_delay_s: float = 0.5
