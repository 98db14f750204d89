"""LANrage: the one entry point, installed as the ``lanrage`` command (``python cli.py`` in a checkout)."""

from __future__ import annotations

import os
import sys

# Thespian probes 8.8.8.8 to find its own address unless this is set.
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

import typer

from commands import register_all
from commands.common import UsageError
from mesh.text import shown

HELP = "LANrage: friends' machines anywhere on the internet as one virtual LAN, over WireGuard."


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The command tree; with ``argv``, only the part that ``argv``'s command needs."""
    app = typer.Typer(
        name="lanrage",
        help=HELP,
        no_args_is_help=True,
        # Plain help: rich's renderer costs more start-up time than a client command's own work.
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    # A callback keeps the root a group even when only one command is registered
    # (typer would otherwise run that command as the root and read its name as an argument).
    app.callback()(_root)
    register_all(app, argv)
    return app


def _print_version(value: bool) -> None:
    if value:
        # The one version number: the one every NodeStarted records as software_version.
        from actors.node import SOFTWARE_VERSION

        print(f"lanrage {SOFTWARE_VERSION}")
        raise typer.Exit(0)


def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                       is_eager=True, callback=_print_version)) -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        build_app(args)(args=args, prog_name="lanrage", standalone_mode=False)
    except UsageError as error:
        print(f"lanrage: {shown(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        return 1
    except Exception as error:  # the user gets one line, never a traceback
        # Click's usage errors (missing argument, unknown command) carry their own status, 2.
        status = getattr(error, "exit_code", 1)
        print(f"lanrage: {shown(error)}", file=sys.stderr)
        return status if isinstance(status, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
