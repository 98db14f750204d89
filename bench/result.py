"""The machine-readable result every benchmark prints last, which ``bench/all.py`` reads.

A bench keeps its human output and ends with one line::

    BENCH-RESULT {"bench": "cli", "figures": [...], "load_before": [...], "load_after": [...]}

Each figure is what the bench measured (its value, shown with its unit), the like-for-like
baseline of the same run with the ratio, the target as words, and whether it was met
(``null`` for a figure printed beside the targeted ones, with no target of its own).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

RESULT_PREFIX = "BENCH-RESULT "


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    digits: int = 2
    paired_ratio: float | None = None  # the median of per-round ratios, when the bench pairs its rounds

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def shown(self, value: float | None = None) -> str:
        """The value as a person reads it: thousands separated, the unit after a space."""
        value = self.value if value is None else value
        if value is None:
            return "none"
        digits = 0 if abs(value) >= 10_000 else self.digits
        number = f"{value:,.{digits}f}"
        if self.unit in ("", "x"):
            return f"{number}{'x' if self.unit == 'x' else ''}"
        return f"{number}{'' if self.unit.startswith('/') else ' '}{self.unit}"

    def as_dict(self) -> dict[str, object]:
        row = asdict(self)
        row["ratio"] = self.ratio
        row.pop("paired_ratio")
        row["shown"] = self.shown()
        row["baseline_shown"] = "" if self.baseline is None else self.shown(self.baseline)
        return row


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def emit(bench: str, figures: list[Figure], load_before: list[float] | tuple[float, ...] | None = None,
         note: str = "") -> None:
    """Print the result line (last, so that ``bench/all.py`` finds it whatever came before)."""
    document = {"bench": bench, "figures": [figure.as_dict() for figure in figures],
                "load_before": list(load_before) if load_before is not None else None,
                "load_after": load_average(), "cpus": os.cpu_count(), "note": note}
    print(RESULT_PREFIX + json.dumps(document, ensure_ascii=False), flush=True)


def parse(output: str) -> dict[str, object] | None:
    """The last result line of a bench's output, or None when it printed none."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            document = json.loads(line[len(RESULT_PREFIX):])
            return document if isinstance(document, dict) else None
    return None
