"""Every threshold the actors use, in one picklable config (defaults from the seed)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConnectionConfig:
    degraded_latency_ms: float = 200.0  # above this a connection is degraded
    # ... in this many answered probes in a row on its path: one late answer is no verdict (the
    # first probe after an outage waits for WireGuard's new handshake and a busy CPU: 494 ms
    # once, on a 20 ms path, which degraded it and moved it to a relay for nothing).
    latency_probes_to_degrade: int = 3
    lost_probes_before_action: int = 3  # consecutive lost probes before failover or reconnect
    # Reconnect attempts before the connection is marked failed, which means "unreachable
    # now", never "given up": while both nodes are in the party it keeps retrying, and the
    # WireGuard peer is removed only when the member leaves or the control server expires it.
    attempts_before_failed: int = 3
    # A failed connection retries every path it has (a probe through the tunnel, a punch of
    # the direct candidates, a relay session if it holds none) after this, doubling to the
    # cap: the first retries come quickly (most outages are seconds), and a friend who is
    # gone for an hour costs one retry per half minute. Each delay is jittered by +/- this
    # fraction so that the peers of a node that lost its uplink do not retry in lockstep.
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    retry_jitter: float = 0.2
    # While failed, the tunnel is probed this often: a path that works again is seen within
    # a second (and WireGuard, having data to send, keeps initiating handshakes). A failed
    # connection's probe is one ping a second, no event unless it is answered.
    failed_probe_s: float = 1.0
    direct_retry_s: float = 30.0  # while on a relay, retry the direct path this often
    probe_interval_s: float = 5.0
    # An idle tunnel whose peer is heard (its packets, keepalives at least, arrived within
    # ``keepalive_s + probe_interval_s``) and that sent no more than ``idle_tx_bytes_s`` a
    # second in any counter reading for a probe interval (a probe, an answer to the peer's
    # probe and a keepalive in one second make ~190 bytes; a game sends kilobytes a second)
    # is probed only every ``idle_probe_interval_s``: WireGuard's own packets prove the path,
    # and the probe only refreshes the latency figure. Sixteen idle peers probed every 5 s,
    # both ways, through wireguard-go and the relay proxy, were the largest share of an
    # idle node's CPU. A tunnel that sends again is back to ``probe_interval_s`` at the next
    # counter reading; one whose peer falls silent, at its next probe (no longer than this).
    # Only after its last ``idle_after_answered`` probes were all answered (half a loss
    # window, 50 s at the normal rate), and never after a lost one: a young or lossy path
    # keeps the 5 s probes that the loss window, the quality decisions and `diagnose`
    # ("loss rose before the drop") read. Off by default (equal to ``probe_interval_s``):
    # at 30 s an idle node with 16 relayed peers saved ~0.2 % of a core, but loss that
    # rises on a long-idle tunnel then meets one probe in 30 s, and `diagnose` can no
    # longer tell it from a clean cut (tests/e2e/test_lab_forensic_causes.py).
    idle_probe_interval_s: float = 5.0
    idle_tx_bytes_s: float = 250.0
    idle_after_answered: int = 10
    # A connecting connection is probed this soon, so status says "connected" as soon as
    # the tunnel answers rather than a whole probe interval later.
    first_probe_s: float = 0.5
    probe_timeout_s: float = 1.0
    punch_timeout_s: float = 5.0
    punch_session_slot_s: float = 600.0  # retries of both ends within one slot share a punch session
    # Fast detection from WireGuard's own counters (``ReadPeerStats``): while the tunnel
    # sends, read them every ``watch_interval_s``; when it is idle, only once a probe
    # interval (an idle peer costs one read and one probe per 5 s, as before). A tunnel
    # that sent but received nothing for ``silent_rx_s`` (a game at 20+ packets a second
    # gets its replies within a few tens of ms; WireGuard's own passive keepalive answers
    # one-way traffic within 10 s, so silence alone is only a suspicion) or whose last
    # handshake is older than ``handshake_stale_s`` (WireGuard rekeys every 120 s and gives
    # up on a key after 180 s) is checked with ``confirm_probes`` probes at once, of
    # ``confirm_timeout_s`` each: only if all are lost is the path dead, and it fails over
    # (or reconnects) at once. With these, a dead direct path moves to the relay in about
    # 1.5 s; random loss of 20 % loses all three probes of a check 5 % of the time, and a
    # check only happens after a silence that such loss does not make on a busy tunnel.
    watch_interval_s: float = 0.25
    # Idle, the counters are read this often: traffic that starts is seen within a second, so
    # a path that dies soon after is still caught in about 2 s. The idle readings of all
    # connections fall on a common beat of this period (0.5 to 1.5 s after the last one), and
    # the edge's reads of one interface within ``agent.adapters.STATS_SHARED_S`` share one
    # UAPI call, so a node pays one read a second, not one per peer.
    idle_watch_interval_s: float = 1.0
    # ... and every ``quiet_watch_interval_s`` while the tunnel is idle with its peer heard (its
    # probe armed at ``idle_probe_interval_s``): traffic that starts is seen within 2 s. A path
    # that died in the last half minute is then caught up to a second later than on the 1 s
    # beat; one that died longer ago is on the 1 s beat again (its peer is no longer heard).
    # Sixteen idle peers cost 48 actor messages a second on the 1 s beat.
    quiet_watch_interval_s: float = 2.0
    silent_rx_s: float = 0.75
    # A connection that just moved onto a relay waits this long before its silence counts:
    # the peer's side has to notice the dead path (or get the relay offer) and bind its end
    # of the session, and until then nothing can come back.
    relay_join_grace_s: float = 2.5
    # A relayed path found dead on the node's selected relay: the relay monitor is told and
    # probes that relay at once (its probes time out after 0.5 s; a killed relay's ICMP is
    # rate-limited), so its verdict comes within this; meanwhile the connection does not
    # reconnect onto that relay (a dead relay costs a 1 s session hello timeout and the
    # pair's recovery with it). A relay that answers: the peer's side is the cause, reconnect.
    relay_verdict_wait_s: float = 1.0
    handshake_stale_s: float = 150.0
    confirm_probes: int = 3
    # A check's probes wait three of the path's last round trips, at least
    # ``confirm_timeout_min_s`` and at most ``confirm_timeout_s``: on a LAN or a nearby peer
    # the check takes a quarter second, on a 150 ms path half a second.
    confirm_timeout_s: float = 0.5
    confirm_timeout_min_s: float = 0.25
    # After a first round of ``confirm_probes`` all lost, a check sends the rest at once:
    # enough that the path's loss loses them all less than ``check_false_alarm`` of the
    # time (at 75 % round-trip loss, 33), up to ``confirm_probes_max``: a dead path loses
    # them all the same. A tunnel with sparse traffic (a few pings a second) under 50 % loss
    # each way falls silent for 0.75 s often: about one check every 1.5 s (sim), so 1e-3
    # a check moved such a pair every half hour; at 1e-4, every five hours.
    check_false_alarm: float = 1e-4
    confirm_probes_max: int = 33
    # The loss a check assumes at least (50 % each way, the worst the connection promises
    # not to flap at), whatever the loss window says: the window spans the last 100 s of
    # probes, and loss that began a few seconds ago is not in it (at the onset of 50 % loss,
    # a check of 3 sized by a clean window was lost 42 % of the time and moved the pair).
    check_assumed_loss: float = 0.75
    # The rest of a check's probes go out this long after its first round if none of it is
    # answered yet (or three of the path's round trips, if longer; at most a probe timeout):
    # a live path answers within a round trip, so a healthy one sends only the first round,
    # and a dead one is decided one probe timeout after this, not after two timeouts (0.5 s
    # in the lab, where the second round waiting for the first's timeout cost 0.25 s of
    # detection). A busy tunnel's dead path is seen about 1.3 s after it died (lab). An
    # idle tunnel's is seen at its next probe.
    confirm_rest_after_s: float = 0.05
    # Loss over the last ``loss_window_probes`` probes (round trips: 20 % loss each way
    # loses 36 % of them, 50 % each way 75 %): degraded at or above ``degraded_loss``, up
    # again at or below ``recovered_loss``, decided only on at least half a window. The gap
    # is the hysteresis: at 20 % each way a 20-probe window reaches 60 % about once in 250.
    # A degraded direct path moves to the relay only when the relay's own last window (the
    # relay monitor's) lost at least ``switch_loss_margin`` less (three standard deviations
    # of a 20-probe window's estimate at 75 % loss: two paths equally lossy do not trade
    # places by chance), and no switch for quality (nor the upgrade back to direct) follows
    # another within ``min_switch_interval_s``.
    loss_window_probes: int = 20
    degraded_loss: float = 0.6
    recovered_loss: float = 0.4
    switch_loss_margin: float = 0.3
    min_switch_interval_s: float = 60.0
    # With a relay at hand, put a new connection on it at once and punch behind it (the
    # DERP way): a relayed pair is up within a relay round trip instead of after a failed
    # punch. Skipped when one side is open or port-forwarded: direct is then near certain.
    relay_first: bool = True
    metrics_interval_s: float = 60.0  # one aggregated metrics window (probes, counters) each
    # A metric window whose figures match the last recorded sample is counted, not written:
    # the same when its mean latency and its jitter are within metrics_same_ms or
    # metrics_same_ratio of the recorded ones (the larger), its loss within metrics_same_loss,
    # and its probe error the same. 5 ms / 25 %: a steady path's window means move by a few
    # ms (probe noise, queueing); a route change or a saturated uplink moves them by tens.
    # 0.1: one lost probe in a window of twelve (8 %) is noise; two (17 %) are written, as
    # they near the 20 % that `diagnose` calls rising loss.
    metrics_same_ms: float = 5.0
    metrics_same_ratio: float = 0.25
    metrics_same_loss: float = 0.1
    # A run of same windows is written at least this often: the chart gets a point every
    # quarter hour on a steady path (96 samples a peer-day instead of 1,440), and a crash
    # loses at most a quarter hour of the count.
    metrics_record_max_s: float = 900.0
    # A run of direct-path retries failing for the same reason (every direct_retry_s on a
    # relayed peer) is written as one counted record at its end, or at least this often:
    # those records are kept for good (they are not samples), so an hour keeps a relayed
    # peer's year at ~8,800 rows instead of ~1 million.
    repeats_record_max_s: float = 3600.0
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
    record_interval_s: float = 30.0  # latency decisions on each interval's aggregate
    # An interval that changes nothing (every probe answered, or none, the median round trip
    # within same_rtt_ms or same_rtt_ratio of the last record, and the relay not degraded) is
    # counted into a run, not written; the run is one RelayProbed when something changes or
    # after record_max_s: a steady relay writes one record an hour instead of 120.
    same_rtt_ms: float = 5.0
    same_rtt_ratio: float = 0.25
    record_max_s: float = 3600.0
    dead_after_misses: int = 2  # consecutive lost probes: the relay is gone, fail over at once
    # ... on a clean path. On a lossy one, two misses in a row are common (36 % of round trips
    # lost at 20 % loss each way: one round in eight), and each false death moves every
    # connection on the relay. So the misses needed grow with the relay's recent loss until
    # a run that long has at most dead_false_alarm odds by chance (at two rounds a second,
    # one false death in about 1.4 hours), up to dead_after_misses_max (6 s of silence).
    loss_history_probes: int = 40  # the recent loss: the last 20 s of probes
    dead_false_alarm: float = 1e-4
    dead_after_misses_max: int = 12
    # A relay dies only when a whole burst is lost too: the round after a miss sends this many
    # probes at once (or the misses its recent loss needs, if more). A killed relay loses the
    # burst in the round that would have killed it anyway; a path that just turned lossy (36 %
    # of round trips lost at 20 % each way, its history still clean) loses all six with 0.2 %
    # odds, where two single misses in a row were 13 % and moved relayed pairs under loss.
    death_confirm_probes: int = 6
    # ... but only when the uplink is known to work: in a round with a burst, every live relay
    # gets one, and another relay answering its whole burst shows the uplink clean (a killed
    # relay still dies in that round). Without that witness (one relay, or the node's own
    # uplink lossy: at 50 % each way a burst of six is lost 18 % of the time, and every relay
    # "died" about every 30 s), the relay dies only after a run of misses that
    # ``uplink_assumed_loss`` (50 % each way, the worst a pair promises not to flap at)
    # makes as unlikely as ``dead_false_alarm``: 33, the rest of them sent at once in the
    # next round (a death then takes one round more, 0.5 s).
    uplink_assumed_loss: float = 0.75
    degraded_rtt_ms: float = 150.0  # the selected relay is degraded above this (or when silent)
    min_improvement_ms: float = 10.0  # a switch needs at least this much better ...
    max_ratio: float = 2 / 3  # ... and below this fraction of the old relay's rtt


@dataclass(frozen=True)
class StaticDeviceConfig:
    # The router reads the device's last handshake this often: status and the log see a
    # device come up within seconds, at the cost of one UAPI read per device and poll.
    poll_s: float = 5.0
    # WireGuard re-handshakes every 120 s while packets flow (the device's keepalive keeps
    # them flowing) and drops a session after 180 s without one (REJECT_AFTER_TIME): a
    # handshake older than that means the device is off or out of reach.
    silent_after_s: float = 180.0


@dataclass(frozen=True)
class ActorConfig:
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    relay_monitor: RelayMonitorConfig = field(default_factory=RelayMonitorConfig)
    static_device: StaticDeviceConfig = field(default_factory=StaticDeviceConfig)
    status_timeout_s: float = 2.0
    # Every party subnet a server hands this node must lie inside this private range (and so
    # every address WireGuard routes): a server never steers the node's routing beyond it.
    mesh_range: str = "10.66.0.0/16"
    # A crashed child is recreated after this delay, unless its parent is told to exit
    # meanwhile (thespian's shutdown ends children before parents).
    restart_delay_s: float = 0.5
    # How often a party checks that its address is on a working interface (wireguard-go may
    # exit under it), or, while it is not, tries to put it there again.
    interface_check_s: float = 5.0
    # A node whose newest row is this old writes one NodeAlive (none while anything else is
    # written; checked four times an interval): a crash's time is known to within it, and
    # replay never shows a running node as down. At most 60 rows an hour even on a node with
    # no party (~0.7 MB a day at ~510 bytes a row, inside the 5 MB node-day budget of
    # bench/log.py); fewer the busier it is.
    alive_interval_s: float = 60.0
