"""Printing text that came from other machines: a rich console that shows it, never obeys it.

Names, reasons and errors in the log come from control servers and peers. ``SafeConsole``
passes every string it renders (cells, table titles, plain prints) through
``mesh.text.shown``, so a newline or an escape sequence in a name prints as a visible
``\\x..`` escape; whatever reaches the terminal by another way (a prebuilt ``Text``) is
cleaned once more segment by segment, keeping only the console's own line breaks and styles.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mesh.text import shown

if TYPE_CHECKING:
    from rich.console import Console
    from rich.segment import Segment


def _line_safe(text: str) -> str:
    return "\n".join(shown(part) for part in text.split("\n"))


def console(**options: Any) -> Console:
    from rich.console import Console
    from rich.segment import Segment

    class SafeConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(shown(text), **kwargs)

        def _render_buffer(self, buffer: Iterable[Segment]) -> str:
            return super()._render_buffer(
                segment if segment.control else Segment(_line_safe(segment.text), segment.style)
                for segment in buffer)

    return SafeConsole(**options)
