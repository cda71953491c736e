"""Headline figures of the benchmarks: each script prints its own as marked lines, scripts/bench.py gathers them
from every script it runs into one table, beside issue 13's target where the issue sets one."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable

MARK = "FIGURE\t"


def figure(name: str, value: float, unit: str = "", at_least: float | None = None,
           at_most: float | None = None) -> None:
    """Print one headline figure as a line bench.py gathers; at_least / at_most: the target, if there is one."""
    print(MARK + json.dumps({"name": name, "value": value, "unit": unit, "at_least": at_least,
                             "at_most": at_most}), flush=True)


def gathered(lines: Iterable[str]) -> list[dict]:
    """The figures among a script's output lines."""
    return [json.loads(line[len(MARK):]) for line in lines if line.startswith(MARK)]


def _shown(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.1%}"
    if isinstance(value, int):  # a count
        return f"{value:,}{' ' + unit if unit else ''}"
    digits = (3 if unit == "x" else 2) if abs(value) < 10 else 1 if abs(value) < 1000 else 0  # 1.996x is not 2x
    return f"{value:,.{digits}f}{'' if unit in ('x', '') else ' '}{unit}"


def table(figures: list[tuple[str, dict]]) -> str:
    """A markdown table of (benchmark, figure) pairs: value, target and whether it is met."""
    out = ["| benchmark | figure | value | target | met |", "|---|---|---|---|---|"]
    for bench, f in figures:
        value, unit, low, high = f["value"], f["unit"], f["at_least"], f["at_most"]
        like = int if isinstance(value, int) else float  # a target is shown as its figure is
        target = (f"≥ {_shown(like(low), unit)}" if low is not None else f"≤ {_shown(like(high), unit)}"
                  if high is not None else "")
        met = "" if not target else "yes" if (low is None or value >= low) and (high is None or value <= high) \
            and not math.isnan(value) else "no"
        out.append(f"| {bench} | {f['name']} | {_shown(value, unit)} | {target} | {met} |")
    return "\n".join(out)
