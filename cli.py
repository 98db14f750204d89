"""LANrage: the one entry point (``python cli.py --help``)."""

from __future__ import annotations

import os
import sys

# Thespian probes 8.8.8.8 to find its own address unless this is set.
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

import typer

from commands import register_all
from commands.common import UsageError

app = typer.Typer(
    name="lanrage",
    help="LANrage: friends' machines anywhere on the internet as one virtual LAN, over WireGuard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_all(app)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except UsageError as error:
        print(f"lanrage: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        return 1
    except typer.TyperException as error:
        # Click's usage errors (missing argument, unknown command): its message and status 2.
        print(f"lanrage: {error}", file=sys.stderr)
        return int(getattr(error, "exit_code", 2))
    except Exception as error:  # the user gets one line, never a traceback
        print(f"lanrage: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
