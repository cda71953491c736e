"""The results across training seeds, the report that leads: every figure of every seed's run side by side, its
mean over the seeds and a 95 % interval over them (Student's t with the seeds as the units: it includes training
variance, which one run's interval over test items does not; one seed gives no interval).

Written from each seed's results directory (`seed-S/` under results: eval/, probes/ and oracle/ files per stage):
seeds.csv (one row per figure: mean, sd, interval, each seed's value), seeds-headline.json (each seed's headline
figures, cocoracle/headline.py, as mean, low and high: what `dvc metrics diff` and `dvc exp show` show),
seeds.png, and report.md with its HTML page (report.html), which link each seed's own report.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cocoracle.atomic import write_text
from cocoracle.config import InputError, oracle_stages
from cocoracle.headline import path_for
from cocoracle.plots import pyplot, save_png
from cocoracle.report_html import markdown_page
from cocoracle.shapes import check_columns, read_json

SPLITS = ("val", "dev", "test", "ood")
SECTIONS = {"accuracy": "Coconut answer accuracy", "oracle": "Oracles over all thoughts",
            "oracle_thought": "Oracles per thought",
            "reference": "Probe references for the oracles (linear-probe product, joint probe)",
            "probe": "Thought probes (chosen on val, scored on the held-out split)"}
INTERVENTIONS = {"ablation": ("Ablation: answer accuracy per answer column (0: units) with thought t replaced; "
                              "`none` is the unablated model on the same problems"),
                 "patching": ("Patching: share of (recipient, donor) pairs, differing only in column c, whose answer "
                              "column c takes the donor's digit with thought t from the donor; `if ignored` is the "
                              "share that writes it unpatched")}
REFERENCES = {"linear_product": "linear-probe product", "joint_probe": "joint probe"}


def seed_interval(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, standard deviation and 95 % Student's t interval over seeds (nan where fewer than two values)."""
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(array):
        return math.nan, math.nan, math.nan, math.nan
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(array) - 1)) * sd / math.sqrt(len(array))
    return mean, sd, mean - half, mean + half


def _oracle_figures(path: Path, stage: int) -> list[dict[str, Any]]:
    """Each oracle's exact match per task, over all thoughts and per thought, and its best baseline's on the same
    items (the baseline that seed's table names best)."""
    try:
        table = pd.read_csv(path, dtype={"thought": str})
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None
    check_columns(table, {"oracle": "string", "condition": "string", "task": "string", "thought": "string",
                          "exact_match": "number", "exact_match_best_baseline": "string"}, path)
    rows = []
    for (kind, task, thought), group in table.groupby(["oracle", "task", "thought"], sort=False):
        by_condition = group.set_index("condition")["exact_match"]
        own = group[group["condition"] == "oracle"].iloc[0]
        section = "oracle" if thought == "all" else "oracle_thought"
        where = "all thoughts" if thought == "all" else f"thought {thought}"
        name = f"stage {stage} · {kind} · {task} · {where}"
        rows.append({"section": section, "figure": f"{name} · EM", "value": own["exact_match"]})
        rows.append({"section": section, "figure": f"{name} · best baseline EM",
                     "value": by_condition[own["exact_match_best_baseline"]]})
    return rows


def run_figures(run: Path, params: dict[str, Any]) -> pd.DataFrame:
    """One seed's figures (section, figure, value) from its results directory."""
    stages = range(params["coconut"]["num_stages"] + 1)
    rows: list[dict[str, Any]] = []
    for stage in stages:
        metrics = read_json(run / "eval" / f"stage-{stage}.json", "eval")
        for split in (s for s in SPLITS if isinstance(metrics.get(s), dict)):
            rows.append({"section": "accuracy", "figure": f"stage {stage} · {split} · free generation",
                         "value": metrics[split]["accuracy"]})
            if split in ("dev", "test"):
                rows.append({"section": "accuracy", "figure": f"stage {stage} · {split} · teacher-forced",
                             "value": metrics[split]["teacher_forced"]})
    for stage in oracle_stages(params):
        rows += _oracle_figures(run / "oracle" / f"stage-{stage}.csv", stage)
    for stage in stages[1:]:
        summary = read_json(run / "probes" / f"stage-{stage}.json", "probes")
        for label, by_thought in summary.get("by_thought", {}).items():
            for thought, probe in sorted(by_thought.items(), key=lambda item: int(item[0])):
                name = f"stage {stage} · {label} · thought {thought}"
                rows.append({"section": "probe", "figure": f"{name} · accuracy", "value": probe["accuracy"]})
                rows.append({"section": "probe", "figure": f"{name} · majority baseline", "value": probe["baseline"]})
        for key, reader in REFERENCES.items():
            for task, cells in summary.get(key, {}).items():
                for thought, cell in cells.items():
                    where = "all thoughts" if thought == "all" else f"thought {thought}"
                    rows.append({"section": "reference", "figure": f"stage {stage} · {reader} · {task} · {where}",
                                 "value": cell["accuracy"]})
        rows += _intervention_figures(read_json(run / "interventions" / f"stage-{stage}.json", "interventions"))
    return pd.DataFrame(rows, columns=["section", "figure", "value"])


def _intervention_figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ablation's answer accuracy and each patch's share to the donor (and if ignored), per thought and
    column: figures named `stage K · <intervention> · thought t · column c`."""
    rows, stage = [], metrics["stage"]
    for cell in metrics["ablation"]:
        rows.append({"section": "ablation", "value": cell["correct"] / cell["n"] if cell["n"] else math.nan,
                     "figure": f"stage {stage} · {cell['ablation']} · thought {cell['thought']} · "
                               f"column {cell['column']}"})
    for cell in metrics["patching"]:
        for key, name in (("to_donor", cell["patch"]), ("if_ignored", f"{cell['patch']} if ignored")):
            rows.append({"section": "patching", "value": cell[key] / cell["pairs"] if cell["pairs"] else math.nan,
                         "figure": f"stage {stage} · {name} · thought {cell['thought']} · column {cell['column']}"})
    return rows


def intervention_grid(rows: pd.DataFrame) -> str:
    """Markdown: one row per stage, intervention and thought, one column per answer column, each cell the mean
    over seeds [95 % interval]."""
    parts = rows["figure"].str.extract(r"^stage (\d+) · (.+) · thought (\d+) · column (\d+)$")
    parts.columns = ["stage", "intervention", "thought", "column"]
    cells = pd.concat([parts, rows.apply(_cell, axis=1).rename("cell")], axis=1)
    grid = cells.pivot_table(index=["stage", "intervention", "thought"], columns="column", values="cell",
                             aggfunc="first", sort=False)
    columns = sorted(grid.columns, key=int)
    lines = ["| stage | intervention | thought | " + " | ".join(f"column {c}" for c in columns) + " |",
             "|" + "---|" * (3 + len(columns))]
    for (stage, intervention, thought), row in grid.iterrows():
        values = [row[c] if isinstance(row[c], str) else "–" for c in columns]
        lines.append(f"| {stage} | {intervention} | {thought} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def seed_table(figures: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per figure: section, figure, seeds (how many have it), mean, sd, low, high, then seed_S per seed."""
    columns = [frame.drop_duplicates(["section", "figure"]).set_index(["section", "figure"])["value"]
               .rename(f"seed_{seed}") for seed, frame in figures.items()]
    wide = pd.concat(columns, axis=1, sort=False).reset_index()  # the figures in the order the runs give them
    seed_columns = [f"seed_{seed}" for seed in figures]
    summary = [seed_interval(list(row)) for row in wide[seed_columns].itertuples(index=False)]
    out = wide[["section", "figure"]].copy()
    out["seeds"] = wide[seed_columns].notna().sum(axis=1)
    out[["mean", "sd", "low", "high"]] = pd.DataFrame(summary, index=wide.index)
    return pd.concat([out, wide[seed_columns]], axis=1)


def _flat(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[(*prefix, key)] = float(value)
    return out


def headline_across(headlines: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """The seeds' headline figures, each as {mean, low, high} under its own key path (null where undefined)."""
    per_seed = {seed: {k: v for tree in trees for k, v in _flat(tree).items()} for seed, trees in headlines.items()}
    keys = list(dict.fromkeys(key for flat in per_seed.values() for key in flat))
    out: dict[str, Any] = {"seeds": len(headlines)}
    for key in keys:
        mean, _, low, high = seed_interval([flat[key] for flat in per_seed.values() if key in flat])
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = {name: None if math.isnan(v) else round(v, 6)
                         for name, v in (("mean", mean), ("low", low), ("high", high))}
    return out


def _percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _cell(row: pd.Series) -> str:
    if math.isnan(row["low"]):
        return f"{_percent(row['mean'])} %"
    return f"{_percent(row['mean'])} % [{_percent(row['low'])}, {_percent(row['high'])}]"


def markdown_table(table: pd.DataFrame, seeds: list[int]) -> str:
    """Markdown: figure, mean [95 % over seeds], sd (points), then each seed's value (percent)."""
    head = ["figure", "mean [95 % over seeds]", "sd (pts)", *(f"seed {s}" for s in seeds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [row["figure"], _cell(row), _percent(row["sd"]), *(_percent(row[f"seed_{s}"]) for s in seeds)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_seeds(table: pd.DataFrame, seeds: list[int], path: Path) -> None:
    """Answer accuracy per stage and split, and the oracles' EM over all thoughts: each seed a dot, the mean a bar
    with its 95 % interval over seeds."""
    plt = pyplot()
    shown = table[table["section"].isin(["accuracy", "oracle"])
                  & ~table["figure"].str.endswith("best baseline EM")].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(shown) + 1.2))
    y = np.arange(len(shown))
    ax.barh(y, 100 * shown["mean"], color="#9ecae1")
    has_interval = shown["low"].notna()
    ax.errorbar(100 * shown["mean"][has_interval], y[has_interval],
                xerr=[100 * (shown["mean"] - shown["low"])[has_interval],
                      100 * (shown["high"] - shown["mean"])[has_interval]], fmt="none", ecolor="black", capsize=3)
    for seed in seeds:
        ax.plot(100 * shown[f"seed_{seed}"], y, "o", markersize=3, color="#08519c")
    ax.set_yticks(y, shown["figure"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"% (bar: mean over {len(seeds)} seed(s); line: 95 % interval over seeds; dots: seeds)")
    fig.tight_layout()
    save_png(fig, path)


def write_seed_report(params: dict[str, Any], runs: dict[int, Path], outputs: dict[str, str | Path]) -> None:
    """Write the across-seed `table` (CSV), `headline` (JSON), `plot` (PNG), `report` (markdown) and `page` (HTML)
    from each seed's results directory."""
    out_md, table_path, plot_path = Path(outputs["report"]), outputs["table"], outputs["plot"]
    out_md, seeds = Path(out_md), list(runs)
    table = seed_table({seed: run_figures(run, params) for seed, run in runs.items()})
    headlines = {seed: [read_json(path_for(path), "headline") for path in _results_files(run, params)]
                 for seed, run in runs.items()}
    write_text(table_path, table.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    write_text(outputs["headline"], json.dumps(headline_across(headlines), indent=2) + "\n")
    plot_seeds(table, seeds, Path(plot_path))
    link = _relative(plot_path, out_md)
    parts = [f"# cocoracle results across {len(seeds)} training seed(s)\n",
             (f"Seeds {', '.join(map(str, seeds))} (`run.seeds`): each trains its own Coconut curriculum, oracles "
              "and probes on the same data split. Each figure: its mean over the seeds [95 % interval over seeds, "
              "Student's t with the seeds as the units, so it includes training variance; none with one seed], its "
              "standard deviation in points, then each seed's value. Each seed's report gives that run's "
              "intervals over test items.\n"),
             f"![Headline figures across seeds]({link})\n"]
    for section, title in SECTIONS.items():
        rows = table[table["section"] == section]
        if len(rows):
            parts += [f"## {title}\n", markdown_table(rows, seeds)]
    if table["section"].isin(list(INTERVENTIONS)).any():
        parts.append("## Interventions on the thoughts (mean over seeds [95 % interval]; seeds.csv has each seed)\n")
        for section, title in INTERVENTIONS.items():
            parts += [f"{title}.\n", intervention_grid(table[table["section"] == section])]
    parts += ["## Each seed's report\n"] + [f"- [seed {seed}]({_relative(Path(run) / 'report.md', out_md)})"
                                             for seed, run in runs.items()]
    text = "\n".join(parts) + "\n"
    write_text(out_md, text)
    write_text(outputs["page"], markdown_page(text, "cocoracle results across seeds"))


def _relative(path: str | Path, page: Path) -> str:
    """A link from the page to path."""
    return Path(os.path.relpath(Path(path).resolve(), page.resolve().parent)).as_posix()


def _results_files(run: Path, params: dict[str, Any]) -> list[Path]:
    """The results files of one seed whose headline files the across-seed headline averages."""
    stages = range(params["coconut"]["num_stages"] + 1)
    return ([run / "eval" / f"stage-{k}.json" for k in stages]
            + [run / "probes" / f"stage-{k}.json" for k in stages[1:]]
            + [run / "oracle" / f"stage-{k}.json" for k in oracle_stages(params)])

