"""``db`` commands about the log's upkeep: ``snapshots`` (the fold cache)."""

from __future__ import annotations

from typing import Annotated

import typer

from commands.common import DEFAULT_STATE_DIR, DbOption, StateDirOption, database_url


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
    current = {fold_version(apply, initial) for apply, initial in DEFAULT_FOLDS.values()}
    fresh = sum(1 for _, _, version in listed if version in current)
    print(f"{len(listed)} snapshot{'s' if len(listed) != 1 else ''}, {fresh} written by this "
          f"version's folds (the rest are ignored until rebuilt)")
