"""``db`` commands about the log's upkeep: ``snapshots`` (the fold cache), ``prune``, ``stats``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from commands.common import DEFAULT_STATE_DIR, DbOption, JsonOption, StateDirOption, UsageError, database_url


def snapshots_command(
    drop: Annotated[bool, typer.Option(
        "--drop", help="Forget every snapshot; folds rebuild them from the events.")] = False,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Count the per-stream snapshots (a cache of folded state), or drop them all.

    A snapshot is used only when it was written by the same fold code; dropping them
    loses nothing, the next restart folds the events again and saves new ones.
    """
    from events.state_codec import fold_version
    from store import open_store
    from store.snapshots import DEFAULT_FOLDS

    url = database_url(db, state_dir)
    if drop:
        with open_store(url) as store:
            count = store.drop_snapshots()
        print(f"dropped {count} snapshot{'s' if count != 1 else ''}")
        return
    with open_store(url, readonly=True) as store:
        listed = store.list_snapshots()
    # A version ends with the hash of its initial state; the code part must be this program's.
    current = {(fold_version(apply, start("")) or "").rsplit(":", 1)[0]
               for apply, start in DEFAULT_FOLDS.values()}
    fresh = sum(1 for _, _, version in listed if version.rsplit(":", 1)[0] in current)
    print(f"{len(listed)} snapshot{'s' if len(listed) != 1 else ''}, {fresh} written by this "
          f"version's folds (the rest are ignored until rebuilt)")


def prune_command(
    keep: Annotated[str, typer.Option(
        "--keep", help="Keep metric samples and probe records this long: 30d, 12h, 90m.")] = "30d",
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Delete metric samples and probe records older than --keep; transitions are never touched.

    Positions stay: each pruned stream records a low-water mark above which it is gapless.
    store.retention.upkeep does the same (and refreshes snapshots) for a running node.
    """
    from commands.history import with_zone
    from store import open_store
    from store.retention import parse_keep, prune

    try:
        window = parse_keep(keep)
    except ValueError as error:
        raise UsageError(f"--keep: {error}") from None
    with open_store(database_url(db, state_dir)) as store:
        report = prune(store, window)
    kinds = ", ".join(f"{kind} {rows}" for kind, rows in sorted(report.by_kind.items())) or "nothing"
    print(f"pruned {report.rows} row{'s' if report.rows != 1 else ''} recorded before "
          f"{with_zone(report.cutoff)} from {report.streams} stream"
          f"{'s' if report.streams != 1 else ''} ({kinds})")


def stats_command(
    as_json: JsonOption = False,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Rows and bytes per stream kind, the oldest event kept, and what retention removed."""
    from commands.history import with_zone
    from store import open_store
    from store.retention import log_stats

    with open_store(database_url(db, state_dir), readonly=True) as store:
        stats = log_stats(store)
    if as_json:
        print(json.dumps({
            "kinds": [{"kind": k.kind, "rows": k.rows, "bytes": k.bytes,
                       "oldest": k.oldest.isoformat() if k.oldest else None} for k in stats.kinds],
            "oldest": stats.oldest.isoformat() if stats.oldest else None,
            "database_bytes": stats.database_bytes, "pruned_rows": stats.pruned_rows,
            "pruned_streams": stats.pruned_streams}))
        return
    from rich.table import Table

    table = Table(header_style="bold")
    for column, justify in (("stream kind", "left"), ("rows", "right"), ("bytes", "right"),
                            ("oldest kept", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for kind in stats.kinds:
        table.add_row(kind.kind, f"{kind.rows:,}", f"{kind.bytes:,}",
                      with_zone(kind.oldest) if kind.oldest else "-")
    table.add_row("all", f"{sum(k.rows for k in stats.kinds):,}", f"{sum(k.bytes for k in stats.kinds):,}",
                  with_zone(stats.oldest) if stats.oldest else "-")
    from rich.console import Console

    console = Console(soft_wrap=False, highlight=False)
    console.print(table)
    console.print(f"database size {stats.database_bytes:,} bytes; retention removed "
                  f"{stats.pruned_rows:,} rows from {stats.pruned_streams} streams")
