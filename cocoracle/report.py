"""The results report: a markdown page and its plots, built only from the pipeline's output files."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from cocoracle.atomic import write_text
from cocoracle.config import ORACLE_KINDS, ORACLE_TASKS, InputError
from cocoracle.plots import pyplot, save_png
from cocoracle.report_html import markdown_page
from cocoracle.shapes import check_columns, read_json
from cocoracle.stats import format_interval, wilson
from cocoracle.summarize import accuracy_table

T = TypeVar("T")
SPLITS = ("val", "dev", "test", "ood")
PROBE_LABELS = ("digit_written", "carry_out", "carry_in", "digit_sum", "a_digit", "b_digit")
ORACLE_METRICS = {"exact_match": "EM", "exact_match_any_order": "EM any order", "token_f1": "token F1",
                  "number_f1": "number F1"}
ORACLE_COLUMNS = (["stage", "oracle", "condition", "task", "thought", "n", "interval", *ORACLE_METRICS]
                  + [f"{m}_{end}" for m in ORACLE_METRICS for end in ("low", "high", "best_baseline")]
                  + ["exact_match_diff", "exact_match_diff_low", "exact_match_diff_high"])


def _read(path: str | Path, parse: Callable[[Path], T]) -> T:
    """Parse one input file; a missing or unreadable file is a one-line InputError naming it."""
    try:
        return parse(Path(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except ValueError as exc:
        raise InputError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None


ORACLE_TYPES = {"stage": "integer", "oracle": "string", "condition": "string", "task": "string", "thought": "string",
                "n": "integer", "interval": "string",
                **{c: "string" if c.endswith("_best_baseline") else "number" for c in ORACLE_COLUMNS[7:]}}


def _oracle_csv(paths: list[str | Path]) -> pd.DataFrame:
    """All oracle tables in one frame, each checked for its columns' types; thought stays a string ("0", "1", ...,
    "all")."""
    frames = [check_columns(_read(p, lambda f: pd.read_csv(f, dtype={"thought": str})), ORACLE_TYPES, p)
              for p in paths]
    frames = [frame[ORACLE_COLUMNS].astype({"stage": int, "n": int}) for frame in frames]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ORACLE_COLUMNS)


def _loss_curve(train_dir: str | Path) -> pd.DataFrame:
    """The dvclive training loss of one run: columns step and loss (none where a self-oracle run's every step was
    a rehearsal step, which logs only train/rehearsal_loss)."""
    metrics = Path(train_dir) / "plots/metrics/train"
    if not (metrics / "loss.tsv").exists() and (metrics / "rehearsal_loss.tsv").exists():
        return pd.DataFrame({"step": pd.Series(dtype=int), "loss": pd.Series(dtype=float)})
    curve = _read(metrics / "loss.tsv", lambda p: pd.read_csv(p, sep="\t"))
    return check_columns(curve, {"step": "integer", "loss": "number"}, metrics / "loss.tsv")[["step", "loss"]]


def _run_labels(train_dirs: list[str | Path]) -> list[str]:
    """Short run names, e.g. train/stage-0 and oracle-train/self/stage-3: paths below their common root."""
    resolved = [Path(d).resolve() for d in train_dirs]
    root = Path(os.path.commonpath([d.parent.parent for d in resolved]))
    return [d.relative_to(root).as_posix() for d in resolved]


def _ordered(values: Any, known: tuple[str, ...]) -> list[str]:
    """Known names in their canonical order, then any others sorted."""
    present = set(values)
    return [v for v in known if v in present] + sorted(present - set(known))


def _row(cells: list[Any]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    return "\n".join([_row(head), "|" + "---|" * len(head)] + [_row(r) for r in rows]) + "\n"


def _against_baseline(own: pd.Series, rows: pd.DataFrame, metric: str) -> str:
    """'oracle [95 % interval] / best baseline on the same items' for one metric."""
    best = rows[rows["condition"] == own[f"{metric}_best_baseline"]].iloc[0]
    return f"{format_interval(own[metric], own[f'{metric}_low'], own[f'{metric}_high'])} / {best[metric]:.1%}"


def _difference(own: pd.Series) -> str:
    """Oracle EM minus the best baseline's, in points, with its paired bootstrap interval."""
    diff, low, high = (100 * own[c] for c in ("exact_match_diff", "exact_match_diff_low", "exact_match_diff_high"))
    return f"{diff:+.1f} pts [{low:+.1f}, {high:+.1f}]"


def _oracle_rows(table: pd.DataFrame, keys: list[str]) -> list[list[Any]]:
    """One row per group of `keys` (the oracle's row of that group against its baselines)."""
    rank = {task: i for i, task in enumerate(_ordered(table["task"], ORACLE_TASKS))}
    groups = sorted(table.groupby(keys), key=lambda g: tuple(rank.get(v, v) if k == "task" else v
                                                           for k, v in zip(keys, g[0], strict=True)))
    rows = []
    for values, group in groups:
        own = group[group["condition"] == "oracle"].iloc[0]
        rows.append([*values, own["n"], *(_against_baseline(own, group, m) for m in ORACLE_METRICS),
                     own["exact_match_best_baseline"], _difference(own)])
    return rows


def oracle_table(table: pd.DataFrame) -> str:
    """Markdown: per (stage, oracle, task), over all thoughts, each metric of the oracle [95 % interval] / the
    best baseline of that metric on the same items, and the EM difference with its interval."""
    head = ["stage", "oracle", "task", "n", *(f"{name} / best baseline" for name in ORACLE_METRICS.values()),
            "best EM baseline", "EM − best baseline"]
    return _table(head, _oracle_rows(table[table["thought"] == "all"], ["stage", "oracle", "task"]))


def oracle_thought_table(table: pd.DataFrame) -> str:
    """Markdown: the same per thought position (stage, oracle, task, thought)."""
    head = ["stage", "oracle", "task", "thought", "n",
            *(f"{name} / best baseline" for name in ORACLE_METRICS.values()), "best EM baseline", "EM − best baseline"]
    return _table(head, _oracle_rows(table[table["thought"] != "all"], ["stage", "oracle", "task", "thought"]))


def references_table(table: pd.DataFrame, probes: list[dict[str, Any]], oracle_metrics: list[dict[str, Any]]) -> str:
    """Markdown: per stage, task and thought (and over all), each oracle's exact match beside two probe readers
    scored on the same test rows, references rather than bounds: the linear-probe product and the joint probe, over
    every tensor and from the tensor the oracles read alone; each with its 95 % interval and the interval's kind."""
    readers = {m["stage"]: {name: m.get(name, {}) for name in ("linear_product", "joint_probe")} for m in probes}
    by_tensor = {m["stage"]: {name: m.get(f"{name}_by_tensor", {}) for name in ("linear_product", "joint_probe")}
                 for m in probes}
    sources = {m["stage"]: {kind: m.get(kind, {}).get("source_tensor") for kind in ORACLE_KINDS}
               for m in oracle_metrics}
    own = table[table["condition"] == "oracle"].set_index(["stage", "task", "thought", "oracle"])
    rows = []
    cells_in_order = sorted({key[:3] for key in own.index}, key=lambda k: (
        k[0], ORACLE_TASKS.index(k[1]) if k[1] in ORACLE_TASKS else len(ORACLE_TASKS), k[2] == "all", str(k[2])))
    for stage, task, thought in cells_in_order:
        found = {name: cells.get(task, {}).get(str(thought)) for name, cells in readers.get(stage, {}).items()}
        if not any(found.values()):
            continue
        tensors = sorted({t for t in sources.get(stage, {}).values() if t})
        at_source = [f"{tensor}: " + " / ".join(
            _reference(by_tensor[stage][name].get(tensor, {}).get(task, {}).get(str(thought)))
            for name in ("linear_product", "joint_probe")) for tensor in tensors]
        oracles, kinds = [], {c["interval"] for c in found.values() if c and "interval" in c}
        for kind in ORACLE_KINDS:
            if (stage, task, thought, kind) not in own.index:
                oracles.append("–")
                continue
            cell = own.loc[(stage, task, thought, kind)]
            oracles.append(format_interval(cell["exact_match"], cell["exact_match_low"], cell["exact_match_high"]))
            kinds.add(cell["interval"])
        rows.append([stage, task, thought, *oracles, _reference(found.get("linear_product")),
                     _reference(found.get("joint_probe")), " · ".join(at_source) or "–",
                     ", ".join(sorted(k for k in kinds if isinstance(k, str))) or "–"])
    if not rows:
        return "No oracle task has a probe reference (probes.labels lacks its fields).\n"
    return _table(["stage", "task", "thought", *(f"{kind} oracle EM" for kind in ORACLE_KINDS),
                   "linear-probe product", "joint probe",
                   "at the oracles' source tensor: linear-probe product / joint probe", "interval"], rows)


def _reference(cell: dict[str, Any] | None) -> str:
    """A probe reader's share with its interval (and the tensor a joint probe chose), or '–'."""
    if not cell:
        return "–"
    shown = format_interval(cell["accuracy"], cell["low"], cell["high"])
    return f"{shown} · {cell['tensor']}" if "tensor" in cell else shown


def forgetting_table(metrics: list[dict[str, Any]]) -> str:
    """Markdown: the self-oracle model's answer accuracy before and after oracle fine-tuning, per stage."""
    rows = []
    for m in sorted(metrics, key=lambda m: m["stage"]):
        before, after = m["self_answer_accuracy"]["before"], m["self_answer_accuracy"]["after"]
        rows.append([m["stage"], f"{before:.1%}", f"{after:.1%}", f"{(after - before) * 100:+.1f} pts"])
    return _table(["stage", "answer accuracy before", "after", "change"], rows)


def probe_table(metrics: dict[str, Any]) -> str:
    """Markdown for one stage: thought position x label, the val-chosen probe's test accuracy [95 % interval]
    / majority baseline on the same items · the tensor it reads."""
    by_thought = metrics["by_thought"]
    return _label_grid(by_thought, _ordered(by_thought, PROBE_LABELS), "thought", "–")


def readable_table(metrics: dict[str, Any]) -> str:
    """Markdown for one stage: per step and label, the first position (in computation order) whose val-chosen
    probe reaches the readability bar on val, with its test accuracy [95 % interval] / baseline · tensor."""
    readable = metrics["readable"]
    return _label_grid(readable, list(readable), "step", "nowhere", where=True)


def _label_grid(by_label: dict[str, dict[str, dict[str, Any] | None]], labels: list[str], head: str, missing: str,
                where: bool = False) -> str:
    """A table of chosen probes: one row per key (thought or step), one column per label; each cell 'accuracy
    [interval] / baseline · tensor' (`where`: prefixed with the probe's position), or `missing`."""
    keys = sorted({int(k) for label in labels for k in by_label[label]})
    rows = []
    for key in keys:
        cells: list[Any] = [key]
        for label in labels:
            probe = by_label[label].get(str(key))
            cells.append((f"{probe['position']}: " if where else "")
                         + f"{format_interval(probe['accuracy'], probe['low'], probe['high'])} / "
                         f"{probe['baseline']:.1%} · {probe['tensor']}" if probe else missing)
        rows.append(cells)
    return _table([head] + labels, rows)


def _placeholder(note: str, path: str | Path) -> None:
    """A PNG that only says there was nothing to plot."""
    fig, ax = pyplot().subplots(figsize=(5, 1.5))
    ax.text(0.5, 0.5, note, ha="center", va="center")
    ax.axis("off")
    save_png(fig, path)


def plot_accuracy(metrics: list[dict[str, Any]], path: str | Path) -> None:
    """PNG: answer accuracy per stage, free-generation (solid) and teacher-forced (dashed) per split."""
    if not metrics:
        return _placeholder("No evaluation metrics.", path)
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ordered = sorted(metrics, key=lambda m: m["stage"])
    for i, split in enumerate(s for s in SPLITS if any(s in m for m in metrics)):
        runs = [m for m in ordered if split in m]
        stages = [m["stage"] for m in runs]
        ax.plot(stages, [m[split]["accuracy"] for m in runs], marker="o", color=f"C{i}", label=f"{split} free-gen")
        ax.plot(stages, [m[split]["teacher_forced"] for m in runs], marker="x", linestyle="--", color=f"C{i}",
                label=f"{split} teacher-forced")
    ax.set_xticks(sorted({m["stage"] for m in metrics}))
    ax.set(xlabel="curriculum stage", ylabel="answer accuracy", ylim=(0, 1.02), title="Coconut answer accuracy")
    ax.legend(fontsize="small")
    save_png(fig, path)


def plot_oracle(table: pd.DataFrame, path: str | Path) -> None:
    """PNG: one panel per (stage, task); per oracle, exact match by thought (solid) and best baseline (dashed)."""
    positions = table[table["thought"] != "all"].assign(position=lambda t: t["thought"].astype(int))
    if positions.empty:
        return _placeholder("No per-thought oracle results.", path)
    stages, tasks = sorted(positions["stage"].unique()), _ordered(positions["task"], ORACLE_TASKS)
    fig, axes = pyplot().subplots(len(stages), len(tasks), figsize=(3.2 * len(tasks), 2.6 * len(stages) + 0.6),
                                  squeeze=False, sharey=True)
    for (stage, task), ax in zip([(s, t) for s in stages for t in tasks], axes.flat, strict=True):
        panel = positions[(positions["stage"] == stage) & (positions["task"] == task)]
        ax.set_title(f"stage {stage} · {task}", fontsize="medium")
        for i, oracle in enumerate(sorted(panel["oracle"].unique())):
            rows = panel[panel["oracle"] == oracle]
            own = rows[rows["condition"] == "oracle"].sort_values("position")
            base = rows[rows["condition"] != "oracle"].groupby("position")["exact_match"].max()
            ax.plot(own["position"], own["exact_match"], marker="o", color=f"C{i}", label=f"{oracle} oracle")
            ax.plot(base.index, base.to_numpy(), marker="x", linestyle="--", color=f"C{i}",
                    label=f"{oracle}: best baseline")
        ax.set_xticks(sorted(panel["position"].unique()))
        ax.set_ylim(0, 1.02)
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles), fontsize="small")
    fig.supxlabel("thought position")
    fig.supylabel("exact match")
    save_png(fig, path, top=1 - 0.5 / fig.get_figheight())


def plot_training(curves: dict[str, pd.DataFrame], path: str | Path) -> None:
    """PNG: training loss by step, one line per run, one panel per kind of run (label minus its last part)."""
    if not curves:
        return _placeholder("No training runs.", path)
    groups: dict[str, list[str]] = {}
    for label in curves:
        groups.setdefault(label.rpartition("/")[0] or label, []).append(label)
    fig, axes = pyplot().subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for (group, labels), ax in zip(groups.items(), axes.flat, strict=True):
        for label in labels:
            ax.plot(curves[label]["step"], curves[label]["loss"], label=label)
        ax.set(yscale="log", xlabel="step", ylabel="training loss", title=group)
        ax.legend(fontsize="small")
    save_png(fig, path)


def _link(path: str | Path, base: Path) -> str:
    """`path` relative to the report's directory, with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _accuracy_section(evals: list[dict[str, Any]], plot: str) -> list[str]:
    """Markdown blocks: the accuracy table and its plot."""
    if not evals:
        return ["No evaluation metrics.\n"]
    return [("Free-generation: greedy decoding from the question alone, with its 95 % Wilson interval over the "
             "split's problems. Teacher-forced: the answer tokens are the argmax given the gold text. Each stage's "
             "final checkpoint (epochs fixed in params.yaml) is scored once per split; nothing was chosen on these "
             "numbers. Truncated: generations the decoding budget cut off before the end token (every evaluated "
             "split together).\n"), accuracy_table(evals), f"![Coconut answer accuracy by stage]({plot})\n"]


def _oracle_section(oracle: pd.DataFrame, summaries: list[dict[str, Any]], plot: str,
                    probes: list[dict[str, Any]], held_out: str) -> list[str]:
    """Markdown blocks: the oracle-vs-baseline tables, its plot, the oracles beside the probe references (the
    linear-probe product and the joint probe) and the before/after answer accuracy."""
    if oracle.empty and not summaries:
        return ["No oracle outputs.\n"]
    parts = []
    if not oracle.empty:
        parts += [("Each oracle keeps the weights of its best validation exact match (chosen on **val**); every figure "
                   f"here is scored once on **{held_out}**. Each cell: the oracle's score [95 % interval] / the "
                   "best baseline "
                   "of that metric (shuffled, random or no injected activation; majority answers), on the same items. "
                   "The intervals: over all thought positions each problem gives several items (one per thought), "
                   "so every interval there is a percentile bootstrap resampling whole problems (a cluster "
                   "bootstrap); at one thought position each problem gives one item, and exact match has a Wilson "
                   "interval, F1 a bootstrap over problems (the oracle CSV's `interval` column says which). EM any "
                   "order counts `b + a` for `a + b`. The last column: oracle EM minus the best baseline's, with its "
                   "paired bootstrap interval over problems.\n"),
                  "### Over all thought positions\n", oracle_table(oracle),
                  f"![Oracle exact match by thought position]({plot})\n",
                  "### Per thought position\n", oracle_thought_table(oracle),
                  "### Beside two probe readers\n",
                  ("Two probe readers of the thoughts, references for the oracles, not bounds on them (a reader "
                   "that reads more than a linear probe, as an oracle can, may exceed both). The **linear-probe "
                   f"product**: the share of the same {held_out} rows on which the linear probes (chosen on "
                   "**val**, per "
                   "label and thought) of every field an answer is made of are all right (a step's text follows "
                   "from its two digits and its carry in). The **joint probe**: a small MLP on one tensor reading "
                   "the task's whole answer at once (one softmax over the answer's field tuples; hidden size, L2 "
                   "penalty, training length and, per thought, the tensor chosen on **val**; the tensor follows "
                   "its figure). Then both from the tensor the oracles read alone (`oracle.source_layer`). Intervals "
                   "are 95 %: Wilson at one thought position (one item per problem), a bootstrap over problems over "
                   "all thoughts (several items per problem); the last column says which.\n"),
                  references_table(oracle, probes, summaries)]
    return parts + ["### Did the self oracle forget? Answer accuracy before and after oracle fine-tuning\n",
                    forgetting_table(summaries) if summaries else "No oracle metrics.\n"]


def _probe_section(probes: list[dict[str, Any]], heatmaps: list[str], step_heatmaps: list[str], held_out: str
                   ) -> list[str]:
    """Markdown blocks: per stage, the per-thought probe table, and the heatmap links; then where each step's
    labels become readable, per stage, with the step x position heatmaps."""
    if not probes:
        return ["No probe outputs.\n"]
    parts = [("Logistic-regression probes, fit on train; per thought position and label the tensor (hidden-state "
              "layer, or the fed-back thought) and the regularisation are chosen on **val**, and the chosen probe "
              f"is scored once on **{held_out}**: accuracy [95 % Wilson interval: one item per problem] / "
              f"majority-class baseline on the same {held_out} items · tensor. Tensors: `thought` is the vector fed "
              "in at that position "
              "(the last layer's output at the position before); `layer_j` is hidden state j computed there "
              "(`layer_0` = that input plus the position embedding, which depends on the question's length); the "
              "last layer at thought t is `thought` at t+1 (t before the last).\n")]
    for m in sorted(probes, key=lambda m: m["stage"]):
        stopped = m["unconverged"]
        parts += [f"### Stage {m['stage']}\n", probe_table(m),
                  f"{stopped['stopped']} of the stage's {stopped['probes']} probes (both tables) stopped at "
                  f"`probes.max_iter` ({stopped['max_iter']}) before converging.\n"]
    parts += [f"![{Path(link).stem} probe heatmap]({link})\n" for link in heatmaps]
    parts += ["### Where is the sum computed?\n",
              ("Every step's labels probed at every position of the computation: each thought, then the answer "
               "pass (`eot` is the `<eot>` input, `###` the answer marker, `answer k` the k-th answer token as "
               "input; steps are columns, units first). Per cell the tensor and C are chosen on **val**. The "
               f"tables give, per step and label, the first position whose chosen probe reaches "
               f"{probes[0]['readable_at']:.0%} val accuracy, scored on **{held_out}**: accuracy [95 % Wilson "
               "interval: "
               "one item per problem] / "
               "majority baseline · tensor; 'nowhere' when no position does.\n")]
    for m in sorted(probes, key=lambda m: m["stage"]):
        parts += [f"#### Stage {m['stage']}\n", readable_table(m)]
    return parts + [f"![{Path(link).stem} step x position heatmap]({link})\n" for link in step_heatmaps]


def accuracy_frame(evals: list[dict[str, Any]]) -> pd.DataFrame:
    """Answer accuracy as data: one row per stage and split, free-generation accuracy with its 95 % Wilson
    interval, teacher-forced accuracy and the generations cut off by the decoding budget (fractions, 4 places)."""
    rows = []
    for m in sorted(evals, key=lambda m: m["stage"]):
        for split in (s for s in SPLITS if s in m):
            scores, n = m[split], m[split]["n"]
            low, high = wilson(round(scores["accuracy"] * n), n)
            rows.append({"stage": m["stage"], "split": split, "n": n, "accuracy": scores["accuracy"],
                         "accuracy_low": low, "accuracy_high": high, "teacher_forced": scores["teacher_forced"],
                         "truncated": scores.get("truncated", 0)})
    columns = ["stage", "split", "n", "accuracy", "accuracy_low", "accuracy_high", "teacher_forced", "truncated"]
    return pd.DataFrame(rows, columns=columns).round(4)


def write_report(eval_metrics: list[str | Path], probe_metrics: list[str | Path], probe_heatmaps: list[str | Path],
                 step_heatmaps: list[str | Path], oracle_tables: list[str | Path], oracle_metrics: list[str | Path],
                 train_dirs: list[str | Path], out_md: str | Path, plots_dir: str | Path) -> None:
    """Write the markdown report, and in plots_dir accuracy.png, oracle.png, training.png, accuracy.csv (the
    answer-accuracy table as data) and results.html (the markdown report as a page), from the pipeline outputs."""
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    evals = [read_json(p, "eval") for p in eval_metrics]
    probes = [read_json(p, "probes") for p in probe_metrics]
    oracle = _oracle_csv(oracle_tables)
    summaries = [read_json(p, "oracle") for p in oracle_metrics]
    curves = dict(zip(_run_labels(train_dirs), [_loss_curve(d) for d in train_dirs], strict=True)) if train_dirs else {}
    plots = {name: plots_dir / f"{name}.png" for name in ("accuracy", "oracle", "training")}
    plot_accuracy(evals, plots["accuracy"])
    plot_oracle(oracle, plots["oracle"])
    plot_training(curves, plots["training"])
    write_text(plots_dir / "accuracy.csv", accuracy_frame(evals).to_csv(index=False, lineterminator="\n"))
    links = {name: _link(path, out_md.parent) for name, path in plots.items()}
    # the split the probes and oracles scored (run.held_out): dev, or test for a study's final figures
    held_out = next((m["held_out"] for m in [*probes, *summaries] if m.get("held_out")), "test")
    training = [f"![Training loss]({links['training']})\n" if curves else "No training runs.\n"]
    parts = (["# cocoracle results\n",
              "Made by `cocoracle report` from the pipeline's output files; every number here is read from them.\n",
              "## Coconut answer accuracy\n"] + _accuracy_section(evals, links["accuracy"])
             + ["## Oracles\n"] + _oracle_section(oracle, summaries, links["oracle"], probes, held_out)
             + ["## Probes\n"] + _probe_section(probes, [_link(p, out_md.parent) for p in probe_heatmaps],
                                                [_link(p, out_md.parent) for p in step_heatmaps], held_out)
             + ["## Training curves\n"] + training)
    text = "\n".join(parts)
    write_text(out_md, text)
    write_text(plots_dir / "results.html", markdown_page(text, "cocoracle results"))
