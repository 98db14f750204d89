"""Plain text tables for the client commands (rich's import alone costs more than their work)."""

from __future__ import annotations

from collections.abc import Sequence

from mesh.text import shown

CELL_LIMIT = 60  # an endpoint list or a long name is cut here so that one row stays on one line


def _cell(value: object) -> str:
    text = "-" if value is None else shown(" ".join(str(value).split()))
    return text if len(text) <= CELL_LIMIT else text[: CELL_LIMIT - 1] + "…"


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> str:
    """Columns padded to their widest cell, a rule under the header, one line per row."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)).rstrip()

    out = [shown(title)] if title else []
    out += [line(headers), line(["-" * width for width in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)
