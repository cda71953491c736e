"""Linear probes over the activation cache, two tables per stage from one pass over the cache:

- thoughts (`stage-K.csv`): each thought position against the labels of the step it replaced (`probes.labels`);
- steps (`stage-K-steps.csv`): every position of the computation (each thought, then the answer pass's `<eot>`,
  `###` and answer tokens) against every step's labels (`probes.step_labels`): where each column's digit and
  carry become readable.

A probe is a logistic regression on standardised activations, fit on train. Its C is chosen on val (the grid is
walked from strong to weak regularisation, each fit starting from the previous solution; ties go to the smaller
C), and so is the tensor of each reported cell; test scores it once, beside the majority-class baseline on the
same items. The (tensor, position) units are fitted in parallel over the job's threads.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from cocoracle.atomic import atomic_path, write_text
from cocoracle.cache_reader import ActivationCache
from cocoracle.config import InputError, run_seed
from cocoracle.data import column_additions
from cocoracle.headline import probes as headline
from cocoracle.headline import write as write_headline
from cocoracle.plots import pyplot, save_png
from cocoracle.provenance import describe
from cocoracle.stats import wilson

SPLITS = ("train", "val", "test")
SCORES = ["accuracy", "baseline", "val_accuracy", "n", "C", "converged"]
COLUMNS = ["stage", "tensor", "thought", "label", *SCORES]
STEP_COLUMNS = ["stage", "tensor", "position", "step", "label", *SCORES]
ANSWER_POSITIONS = ("eot", "###", "answer")  # cache `position` values of the answer pass, in computation order
# the fields an oracle task's answer is made of (a step's text follows from its two digits and carry in)
CEILING_FIELDS = {"step": ("a_digit", "b_digit", "carry_in"), "digit": ("digit_written",), "carry": ("carry_out",),
                  "operands": ("a_digit", "b_digit"), "a_digit": ("a_digit",), "b_digit": ("b_digit",)}
READABLE = 0.9  # a step's label is readable at the first position whose chosen probe reaches this val accuracy
CONSTANT = "constant"  # in place of a tensor: a label with one value in train, known without reading anything

Split = tuple[np.ndarray, np.ndarray]  # (activations, labels) of the rows whose label is known


def fit_probe(train: Split, val: Split, test: Split, c_grid: list[float], max_iter: int, solver: str = "lbfgs"
              ) -> dict[str, float] | None:
    """Logistic-regression probe on standardised inputs with C picked on val (`hits`: which test items it gets
    right; `converged`: whether the chosen fit stopped before max_iter); None when train has a single class or
    val or test has no item. The default solver, lbfgs, makes no random choice; scripts/bench_probe_solvers.py
    measures the others against it (docs/benchmarks.md)."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = train, val, test
    if len(np.unique(y_tr)) < 2 or not len(y_va) or not len(y_te):
        return None
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = (scaler.transform(x) for x in (x_tr, x_va, x_te))
    model = LogisticRegression(max_iter=max_iter, warm_start=True, solver=solver, random_state=0)
    best_score, best_c, best_hits, converged = -1.0, None, None, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is a setting, recorded per probe
        for c in sorted(c_grid):
            model.set_params(C=c).fit(x_tr, y_tr)
            score = model.score(x_va, y_va)
            if score > best_score:
                best_score, best_c, best_hits = score, c, model.predict(x_te) == y_te
                converged = bool(model.n_iter_.max() < max_iter)
    values, counts = np.unique(y_tr, return_counts=True)
    majority = values[np.argmax(counts)]
    return {"accuracy": float(np.mean(best_hits)), "baseline": float(np.mean(y_te == majority)),
            "val_accuracy": float(best_score), "n": len(y_te), "C": float(best_c), "converged": converged,
            "hits": best_hits}


def probed_rows(index: pd.DataFrame) -> pd.DataFrame:
    """The index rows probed: all but answer tokens beyond the gold answer's digits (what a model that does not
    stop writes after it)."""
    digits = index["answer"].astype("string").str.len()
    return index[(index["position"] != "answer") | (index["offset"] < digits)]


def positions(index: pd.DataFrame) -> list[tuple[str, int]]:
    """The probed (position, offset) pairs in computation order: thoughts, <eot>, ###, answer tokens."""
    order = {"thought": 0, **{p: i + 1 for i, p in enumerate(ANSWER_POSITIONS)}}
    pairs = probed_rows(index)[["position", "offset"]].drop_duplicates().itertuples(index=False)
    return sorted(((str(p), int(o)) for p, o in pairs), key=lambda po: (order[po[0]], po[1]))


def position_name(position: str, offset: int) -> str:
    """'thought 1', 'eot', '###', 'answer 0'."""
    return f"{position} {offset}" if position in ("thought", "answer") else position


def step_targets(rows: pd.DataFrame, n_steps: int, labels: list[str]) -> dict[tuple[int, str], np.ndarray]:
    """{(step, label): float array over `rows` (NaN where the problem has no such step)}, from its operands."""
    columns = [column_additions(int(a), int(b)) for a, b in zip(rows["a"], rows["b"], strict=True)]
    return {(s, label): np.array([c[s][label] if s < len(c) else np.nan for c in columns], dtype=float)
            for s in range(n_steps) for label in labels}


def _unit_targets(rows: pd.DataFrame, position: str, n_steps: int, probes: dict[str, Any]
                  ) -> dict[tuple[str, Any, str], np.ndarray]:
    """Every label probed at one position: ('own', None, label) at thoughts, ('step', s, label) everywhere."""
    own = {("own", None, label): rows[label].to_numpy(dtype=float) for label in probes["labels"]
           if position == "thought"}
    return own | {("step", s, label): y for (s, label), y in step_targets(rows, n_steps, probes["step_labels"]).items()}


def label_splits(data: dict[str, tuple[np.ndarray, dict]], key: tuple) -> list[Split]:
    """Train, val and test of one label of a unit: the rows whose label is known, labels as integers."""
    out = []
    for split in SPLITS:
        x, targets = data[split]
        known = ~np.isnan(targets[key])
        out.append((x[known], targets[key][known].astype(int)))
    return out


def label_key(data: dict[str, tuple[np.ndarray, dict]], key: tuple) -> bytes:
    """One label's values over the unit's train, val and test rows: equal keys are the same fit's labels."""
    return b"".join(data[split][1][key].tobytes() for split in SPLITS)


def _fit_unit(data: dict[str, tuple[np.ndarray, dict]], probes: dict[str, Any]) -> list[tuple[tuple, dict]]:
    """Fit every label of one (tensor, position): [(target key, result)] for the labels train has two classes of.

    numpy's BLAS runs on one thread here, so the fits have the same bits whatever the job's thread count (a
    multi-threaded BLAS sums in another order); the units themselves run in parallel."""
    with threadpool_limits(limits=1):
        return _fit_labels(data, probes)


def _fit_labels(data: dict[str, tuple[np.ndarray, dict]], probes: dict[str, Any]) -> list[tuple[tuple, dict]]:
    """Each distinct label vector of the unit is fitted once: at a thought its own step's labels are also step
    labels (digit written, carry, operand digits of step t; the carry in is step t-1's carry), and the fit of
    the same inputs and labels is the same fit."""
    out, fits = [], {}
    for key in data["train"][1]:
        splits = label_splits(data, key)
        labels = label_key(data, key)
        if labels not in fits:
            fits[labels] = fit_probe(*splits, probes["C_grid"], probes["max_iter"])
        fitted = None if fits[labels] is None else dict(fits[labels])  # its own copy: "hits" is popped below
        constant = np.unique(splits[0][1])
        if fitted is None and key[0] == "own" and len(constant) == 1:  # a reader knows it: no probe, no table row
            fitted = {CONSTANT: True, "hits": splits[2][1] == constant[0]}
        if fitted is not None:
            hits = np.full(len(data["test"][1][key]), np.nan)  # over all the position's test rows
            hits[~np.isnan(data["test"][1][key])] = fitted.pop("hits")
            out.append((key, fitted | {"hits": hits if key[0] == "own" else None}))
    return out


def probe_caches(caches: dict[str, ActivationCache], stage: int, probes: dict[str, Any]
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, int, str], np.ndarray]]:
    """The thoughts table and the steps table of one stage's train/val/test caches, and the thoughts table's
    test hits ({(tensor, thought, label): 1/0 per test row of the thought, NaN where the label is unknown})."""
    index = caches["train"].index
    if "position" not in index:
        raise InputError(f"{caches['train'].path}: a cache without answer-pass positions (rerun its collection)")
    n_steps = int(index["n_steps"].max())
    units = [(tensor, pos) for tensor in caches["train"].tensors for pos in positions(index)]

    probed = {split: probed_rows(cache.index) for split, cache in caches.items()}  # filtered once, not per unit

    def load(tensor: str, pos: tuple[str, int]) -> dict[str, tuple[np.ndarray, dict]]:
        data = {}
        for split, cache in caches.items():
            index = probed[split]
            rows = index[(index["position"] == pos[0]) & (index["offset"] == pos[1])]
            rows = rows.sort_values("row")
            data[split] = (cache.load(tensor, rows["row"].to_numpy()), _unit_targets(rows, pos[0], n_steps, probes))
        return data

    jobs = Parallel(n_jobs=max(1, torch.get_num_threads()), return_as="generator")(
        delayed(_fit_unit)(load(tensor, pos), probes) for tensor, pos in units)
    thoughts, steps, hits = [], [], {}
    for (tensor, (position, offset)), fits in zip(units, tqdm(jobs, total=len(units), desc=f"probes stage {stage}"),
                                                  strict=True):
        for (kind, step, label), fitted in fits:
            hit = fitted.pop("hits")
            if fitted.get(CONSTANT):
                hits[CONSTANT, offset, label] = hit
            elif kind == "own":
                hits[tensor, offset, label] = hit
                thoughts.append({"stage": stage, "tensor": tensor, "thought": offset, "label": label, **fitted})
            else:
                steps.append({"stage": stage, "tensor": tensor, "position": position_name(position, offset),
                              "step": step, "label": label, **fitted})
    return pd.DataFrame(thoughts, columns=COLUMNS), pd.DataFrame(steps, columns=STEP_COLUMNS), hits


def composed_ceiling(table: pd.DataFrame, hits: dict[tuple[str, int, str], np.ndarray]
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """{oracle task: {thought, and 'all': the share of test items on which every probe of the fields its answer
    is made of is right}}: what a perfect reader of the linearly readable fields would reach. Per label the probe
    is the one best on val at that thought (a label with one value in train needs no probe: it is that value);
    the items are the thought's test rows (the oracle's items)."""
    chosen = best_by_thought(table)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, fields in CEILING_FIELDS.items():
        per_thought = {}
        for thought in sorted({key[1] for key in hits}):
            tensors = [chosen.get(label, {}).get(str(thought), {}).get("tensor", CONSTANT) for label in fields]
            if any((tensor, thought, label) not in hits for tensor, label in zip(tensors, fields, strict=True)):
                continue
            joint = np.prod([hits[tensor, thought, label] for tensor, label in zip(tensors, fields, strict=True)],
                            axis=0)
            per_thought[str(thought)] = joint[~np.isnan(joint)]
        if per_thought:
            every = np.concatenate(list(per_thought.values()))
            out[task] = {key: _share(v) for key, v in [*per_thought.items(), ("all", every)]}
    return out


def ceilings_by_tensor(table: pd.DataFrame, hits: dict[tuple[str, int, str], np.ndarray]
                       ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{tensor: composed_ceiling from that tensor's probes alone}: what a perfect linear reader of one tensor
    (an oracle's source) would reach."""
    return {tensor: composed_ceiling(table[table["tensor"] == tensor], hits)
            for tensor in _tensor_order(table["tensor"])}


def _share(hits: np.ndarray) -> dict[str, Any]:
    """Share of 1s with its 95 % Wilson interval."""
    low, high = wilson(int(hits.sum()), len(hits))
    return {"accuracy": float(hits.mean()) if len(hits) else float("nan"), "low": low, "high": high, "n": len(hits)}


def _tensor_order(tensors) -> list[str]:
    """thought first, then layers by depth."""
    return sorted(set(tensors), key=lambda t: (t != "thought", int(t.split("_")[1]) if "_" in t else -1))


def heatmap(table: pd.DataFrame, stage: int, path: str | Path) -> None:
    """PNG: one panel per thought position, tensor x label, test accuracy above the majority baseline."""
    gain = table.assign(gain=table["accuracy"] - table["baseline"])
    thoughts = sorted(gain["thought"].unique())
    tensors = _tensor_order(gain["tensor"])
    labels = list(dict.fromkeys(gain["label"]))
    fig, axes, bar = _panels(1, max(len(thoughts), 1),
                             (1.1 * len(labels) * max(len(thoughts), 1) + 2, 0.45 * len(tensors) + 2))
    for thought, ax in zip(thoughts, axes, strict=False):
        panel = (gain[gain["thought"] == thought].pivot_table(index="tensor", columns="label", values="gain")
                 .reindex(index=tensors, columns=labels))
        image = _cells(ax, panel.to_numpy())
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize="small")
        ax.set_yticks(range(len(tensors)), tensors if ax is axes[0] else [""] * len(tensors))
        ax.set_title(f"thought {thought}")
    if thoughts:
        fig.colorbar(image, cax=bar)
    fig.suptitle(f"Stage {stage}: probe test accuracy above the majority baseline, per thought position")
    save_png(fig, path)


def step_heatmap(chosen: dict[str, dict[str, dict[str, dict[str, Any]]]], order: list[str], stage: int,
                 path: str | Path) -> None:
    """PNG: one panel per label, step (rows) x position (columns), the val-chosen probe's test accuracy above
    the majority baseline (the number in a cell is the accuracy itself)."""
    labels = list(chosen)
    fig, axes, bar = _panels(max(len(labels), 1), 1, (0.7 * len(order) + 3, 1.6 * max(len(labels), 1) + 1))
    for label, ax in zip(labels, axes, strict=False):
        steps = sorted(chosen[label], key=int)
        cell = [[chosen[label][s].get(p) for p in order] for s in steps]
        gain = np.array([[c["accuracy"] - c["baseline"] if c else np.nan for c in row] for row in cell])
        image = _cells(ax, gain, [[c["accuracy"] if c else np.nan for c in row] for row in cell])
        ax.set_xticks(range(len(order)), order if ax is axes[len(labels) - 1] else [""] * len(order),
                      rotation=40, ha="right", fontsize="small")
        ax.set_yticks(range(len(steps)), [f"step {s}" for s in steps], fontsize="small")
        ax.set_title(label, fontsize="medium")
    if labels:
        fig.colorbar(image, cax=bar)
    fig.suptitle(f"Stage {stage}: where each step's labels are readable (test accuracy; colour: above baseline)")
    save_png(fig, path)


def _panels(rows: int, columns: int, size: tuple[float, float]):
    """A figure of rows x columns panels (listed row by row) and a colour-bar axis to their right."""
    fig = pyplot().figure(figsize=size)
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[24] * columns + [1])
    panels = [fig.add_subplot(grid[i, j]) for i in range(rows) for j in range(columns)]
    return fig, panels, fig.add_subplot(grid[:, columns])


def _cells(ax, colour: np.ndarray, text: list[list[float]] | None = None):
    """imshow of `colour` in [0, 1] with each cell's value (or `text`) written in it."""
    image = ax.imshow(colour, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(colour):
        shown = value if text is None else text[i][j]
        if not np.isnan(value):
            ax.text(j, i, f"{shown:.2f}", ha="center", va="center", fontsize="x-small",
                    color="white" if value < 0.5 else "black")
    return image


def best_probes(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per label, the probe (tensor, thought) with the best val accuracy, and its test accuracy."""
    best = table.loc[table.groupby("label")["val_accuracy"].idxmax()] if len(table) else table
    return {row.label: _summary(row) | {"thought": int(row.thought)} for row in best.itertuples()}


def best_by_thought(table: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Per label and thought position, the tensor with the best val accuracy, and its test accuracy."""
    best = table.loc[table.groupby(["label", "thought"])["val_accuracy"].idxmax()] if len(table) else table
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in best.itertuples():
        out.setdefault(row.label, {})[str(row.thought)] = _summary(row) | {"thought": int(row.thought)}
    return out


def best_by_step(table: pd.DataFrame) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{label: {step: {position: chosen probe}}}: per cell of the steps table, the tensor best on val."""
    best = table.loc[table.groupby(["label", "step", "position"])["val_accuracy"].idxmax()] if len(table) else table
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for row in best.itertuples():
        out.setdefault(row.label, {}).setdefault(str(row.step), {})[row.position] = _summary(row)
    return out


def first_readable(chosen: dict[str, dict[str, dict[str, dict[str, Any]]]], order: list[str]
                   ) -> dict[str, dict[str, dict[str, Any] | None]]:
    """{label: {step: the first position (computation order) whose chosen probe reaches READABLE on val,
    with its test accuracy; None when no position does}}."""
    return {label: {step: next(({"position": p, **cells[p]} for p in order
                                if p in cells and cells[p]["val_accuracy"] >= READABLE), None)
                    for step, cells in by_step.items()}
            for label, by_step in chosen.items()}


def _summary(row: Any) -> dict[str, Any]:
    """A chosen probe: test accuracy with its 95 % Wilson interval, the baseline on the same items, where it reads."""
    low, high = wilson(round(row.accuracy * row.n), int(row.n))
    return {"accuracy": row.accuracy, "low": low, "high": high, "baseline": row.baseline, "n": int(row.n),
            "val_accuracy": row.val_accuracy, "tensor": row.tensor}


def run_probes(params: dict[str, Any], stage: int, cache_dirs: dict[str, str | Path], outputs: dict[str, str | Path]
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probe one stage. `outputs`: table and steps_table (CSV), heatmap and steps_heatmap (PNG), metrics (JSON:
    per label, and per label and thought, the thought probe best on val; per label, step and position the steps
    probe best on val, and where each step's labels first become readable; the probe-composed ceiling of each
    oracle task over every tensor and from each tensor alone; each reported on test)."""
    caches = {split: ActivationCache(path) for split, path in cache_dirs.items()}
    table, steps, hits = probe_caches(caches, stage, params["probes"])
    for name, frame in (("table", table), ("steps_table", steps)):
        with atomic_path(outputs[name]) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.4f")
    order = [position_name(*p) for p in positions(caches["train"].index)]
    by_step = best_by_step(steps)
    heatmap(table, stage, outputs["heatmap"])
    step_heatmap(by_step, order, stage, outputs["steps_heatmap"])
    summary = {"stage": stage, "best": best_probes(table), "by_thought": best_by_thought(table),
               "positions": order, "by_step": by_step, "ceiling": composed_ceiling(table, hits),
               "ceiling_by_tensor": ceilings_by_tensor(table, hits),
               "readable_at": READABLE,
               "readable": first_readable(by_step, order),
               "held_out": caches["test"].manifest["split"],  # the split scored: dev, or test for final figures
               "unconverged": {"max_iter": params["probes"]["max_iter"], "probes": len(table) + len(steps),
                               "stopped": int(sum((~t["converged"].astype(bool)).sum() for t in (table, steps)))},
               "provenance": describe({"probes": params["probes"]}, cache_dirs.values(), seed=run_seed(params))}
    write_text(outputs["metrics"], json.dumps(summary, indent=2) + "\n")
    write_headline(outputs["metrics"], headline(summary))
    return table, steps
