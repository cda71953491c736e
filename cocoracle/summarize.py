"""The accuracy table over curriculum stages, from the evaluation metrics files."""
from __future__ import annotations

from cocoracle.stats import format_interval, wilson


def accuracy_cell(split: dict) -> str:
    """Free-generation accuracy with its 95 % Wilson interval over the split's problems."""
    n = split["n"]
    return format_interval(split["accuracy"], *wilson(round(split["accuracy"] * n), n))


def accuracy_table(metrics: list[dict]) -> str:
    """Markdown: one row per stage, free-generation accuracy [95 % interval] and teacher-forced accuracy per split,
    and the generations cut off by the decoding budget."""
    splits = [s for s in ("val", "dev", "test", "ood") if any(s in m for m in metrics)]
    held_out = next((s for s in ("test", "dev") if s in splits), "test")
    head = (["stage"] + [f"{s} {kind}" for s in splits for kind in ("free-gen", "teacher-forced")]
            + [f"n {held_out}", "truncated"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in sorted(metrics, key=lambda m: m["stage"]):
        cells = [str(m["stage"])]
        for s in splits:
            cells += [accuracy_cell(m[s]), f"{m[s]['teacher_forced']:.1%}"] if s in m else ["–", "–"]
        cells.append(str(m.get(held_out, {}).get("n", "–")))
        cells.append(str(sum(m[s].get("truncated", 0) for s in splits if s in m)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
