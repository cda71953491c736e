"""The accuracy table over curriculum stages, from the evaluation metrics files."""
from __future__ import annotations


def accuracy_table(metrics: list[dict]) -> str:
    """Markdown: one row per stage, free-generation and teacher-forced accuracy per split."""
    splits = [s for s in ("val", "test", "ood") if any(s in m for m in metrics)]
    head = ["stage"] + [f"{s} {kind}" for s in splits for kind in ("free-gen", "teacher-forced")] + ["n test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in sorted(metrics, key=lambda m: m["stage"]):
        cells = [str(m["stage"])]
        for s in splits:
            cells += [f"{m[s]['accuracy']:.1%}", f"{m[s]['teacher_forced']:.1%}"] if s in m else ["–", "–"]
        cells.append(str(m.get("test", {}).get("n", "–")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
