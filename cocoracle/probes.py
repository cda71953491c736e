"""Linear probes over the activation cache, two tables per stage from one pass over the cache:

- thoughts (`stage-K.csv`): each thought position against the labels of the step it replaced (`probes.labels`);
- steps (`stage-K-steps.csv`): every position of the computation (each thought, then the answer pass's `<eot>`,
  `###` and answer tokens) against every step's labels (`probes.step_labels`): where each column's digit and
  carry become readable.

A probe is a logistic regression on standardised activations, fit on train. Its C is chosen on val (the grid is
walked from strong to weak regularisation, each fit starting from the previous solution; ties go to the smaller
C), and so is the tensor of each reported cell; test scores it once, beside the majority-class baseline on the
same items. The (tensor, position) units are fitted in parallel over the job's threads.

Two references for the oracles, per oracle task and thought, on the oracle's test rows: the linear-probe product
(the share of rows on which the linear probes of every field of the task's answer are all right) and the joint
probe (a small MLP on the same tensor that reads each task's whole answer at once, one softmax over the answer's
field tuples; `probes.joint`). Neither is a bound on what a reader can get from the thought: a nonlinear reader
can beat the first, a better-fitted one the second.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

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
from cocoracle.stats import proportion, wilson

SPLITS = ("train", "val", "test")
SCORES = ["accuracy", "baseline", "val_accuracy", "n", "C", "converged"]
COLUMNS = ["stage", "tensor", "thought", "label", *SCORES]
STEP_COLUMNS = ["stage", "tensor", "position", "step", "label", *SCORES]
ANSWER_POSITIONS = ("eot", "###", "answer")  # cache `position` values of the answer pass, in computation order
# the fields an oracle task's answer is made of (a step's text follows from its two digits and carry in)
TASK_FIELDS = {"step": ("a_digit", "b_digit", "carry_in"), "digit": ("digit_written",), "carry": ("carry_out",),
                  "operands": ("a_digit", "b_digit"), "a_digit": ("a_digit",), "b_digit": ("b_digit",)}
READABLE = 0.9  # a step's label is readable at the first position whose chosen probe reaches this val accuracy
CONSTANT = "constant"  # in place of a tensor: a label with one value in train, known without reading anything
JOINT_CHECK = 25  # the joint probe's val accuracy is measured every this many training steps (and at the last)
JOINT_COLUMNS = ["stage", "tensor", "thought", "task", "accuracy", "val_accuracy", "n", "hidden", "alpha", "steps"]

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


def joint_tasks(probes: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The oracle tasks the joint probe reads: those whose fields are all in `probes.labels` (the tasks the
    linear-probe product covers), none without `probes.joint`."""
    if not probes.get("joint"):
        return {}
    return {task: fields for task, fields in TASK_FIELDS.items() if set(fields) <= set(probes["labels"])}


def _answer_codes(fields: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """One integer per row for the tuple of its `names` field values (digits and carries, each < 10); -1 where one
    is unknown (NaN)."""
    values = np.stack([fields[name] for name in names])
    known = ~np.isnan(values).any(0)
    codes = np.full(values.shape[1], -1, dtype=np.int64)
    codes[known] = (np.nan_to_num(values[:, known]).astype(np.int64) * 10 ** np.arange(len(names))[:, None]).sum(0)
    return codes


def fit_joint(data: dict[str, tuple[np.ndarray, dict]], tasks: dict[str, tuple[str, ...]], joint: dict[str, Any]
              ) -> dict[str, dict[str, Any]]:
    """The joint probe of one (tensor, thought): an MLP on the standardised activations, one ReLU hidden layer and
    per task one softmax over the tuples of the task's field values seen in train (the step's text is one of them:
    its digits and carry in), all heads trained together by full-batch Adam on the summed cross-entropy plus
    alpha/2 times the weights' squared norm per train row. Per task, the hidden size, alpha (from `joint`'s grids)
    and the training step (measured every JOINT_CHECK steps) are those of the best val accuracy (ties: the smaller
    hidden size, the larger alpha, the earlier step), scored once on test. Returns {task: {accuracy, val_accuracy,
    n, hidden, alpha, steps, hits (1/0 over the unit's test rows, NaN where the answer is unknown)}}, without the
    tasks train, val or test has no item of. One thread, one seed: the same bits whatever the job's threads."""
    x_tr = data["train"][0].astype(np.float64)
    mean, scale = x_tr.mean(0), x_tr.std(0)
    scale[scale == 0] = 1.0
    inputs = {split: torch.from_numpy(((data[split][0] - mean) / scale).astype(np.float32)) for split in SPLITS}
    fields = {split: {key[2]: y for key, y in data[split][1].items() if key[0] == "field"} for split in SPLITS}
    heads, labels = [], {}  # (task, its train classes); per task and split a class index per row (-1: none)
    for task, names in tasks.items():
        codes = {split: _answer_codes(fields[split], names) for split in SPLITS}
        if not all((codes[split] >= 0).any() for split in SPLITS):
            continue
        classes = np.unique(codes["train"][codes["train"] >= 0])
        index = {split: np.searchsorted(classes, c).clip(0, len(classes) - 1) for split, c in codes.items()}
        labels[task] = {split: np.where((codes[split] >= 0) & (classes[index[split]] == codes[split]),
                                        index[split], -1) for split in SPLITS}
        labels[task]["known"] = {split: codes[split] >= 0 for split in SPLITS}
        heads.append((task, len(classes)))
    if not heads:
        return {}
    bounds = np.cumsum([0] + [n for _, n in heads])
    train_labels = {task: torch.from_numpy(np.where(labels[task]["known"]["train"], labels[task]["train"], -100))
                    for task, _ in heads}  # cross_entropy's ignore_index where the answer is unknown
    best: dict[str, dict[str, Any]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for hidden in sorted(joint["hidden"]):
            for alpha in sorted(joint["alpha"], reverse=True):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(joint["seed"])
                    net = torch.nn.Sequential(torch.nn.Linear(inputs["train"].shape[1], hidden), torch.nn.ReLU(),
                                              torch.nn.Linear(hidden, int(bounds[-1])))
                adam = torch.optim.Adam(net.parameters(), lr=joint["lr"])
                weights = [net[0].weight, net[2].weight]
                for step in range(1, joint["steps"] + 1):
                    logits = net(inputs["train"])
                    loss = sum(torch.nn.functional.cross_entropy(logits[:, bounds[i]:bounds[i + 1]], train_labels[task])
                               for i, (task, _) in enumerate(heads))
                    loss = loss + alpha / 2 * sum((w ** 2).sum() for w in weights) / len(inputs["train"])
                    adam.zero_grad()
                    loss.backward()
                    adam.step()
                    if step % JOINT_CHECK and step != joint["steps"]:
                        continue
                    with torch.no_grad():
                        predicted = {split: net(inputs[split]) for split in ("val", "test")}
                    for i, (task, _) in enumerate(heads):
                        right = {split: (predicted[split][:, bounds[i]:bounds[i + 1]].argmax(1).numpy()
                                         == labels[task][split]) for split in ("val", "test")}
                        known = labels[task]["known"]
                        score = float(right["val"][known["val"]].mean())
                        if task not in best or score > best[task]["val_accuracy"]:
                            hits = np.where(known["test"], right["test"], np.nan)
                            best[task] = {"accuracy": float(right["test"][known["test"]].mean()),
                                          "val_accuracy": score, "n": int(known["test"].sum()), "hidden": hidden,
                                          "alpha": float(alpha), "steps": step, "hits": hits}
    finally:
        torch.set_num_threads(threads)
    return best


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
    """Every label probed at one position: ('own', None, label) at thoughts, ('step', s, label) everywhere, and
    at thoughts ('field', None, name) for each field the joint probe reads (joint_tasks)."""
    own = {("own", None, label): rows[label].to_numpy(dtype=float) for label in probes["labels"]
           if position == "thought"}
    fields = {("field", None, name): rows[name].to_numpy(dtype=float) for name in
              dict.fromkeys(name for names in joint_tasks(probes).values() for name in names) if position == "thought"}
    steps = {("step", s, label): y for (s, label), y in step_targets(rows, n_steps, probes["step_labels"]).items()}
    return own | steps | fields


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
    """Fit every label of one (tensor, position): [(target key, result)] for the labels train has two classes of,
    and at a thought the joint probe: [(('joint', None, task), result)] (fit_joint).

    numpy's BLAS runs on one thread here, so the fits have the same bits whatever the job's thread count (a
    multi-threaded BLAS sums in another order); the units themselves run in parallel."""
    with threadpool_limits(limits=1):
        fits = _fit_labels(data, probes)
        if any(key[0] == "field" for key in data["train"][1]):
            fits += [(("joint", None, task), fitted)
                     for task, fitted in fit_joint(data, joint_tasks(probes), probes["joint"]).items()]
        return fits


def _fit_labels(data: dict[str, tuple[np.ndarray, dict]], probes: dict[str, Any]) -> list[tuple[tuple, dict]]:
    """Each distinct label vector of the unit is fitted once: at a thought its own step's labels are also step
    labels (digit written, carry, operand digits of step t; the carry in is step t-1's carry), and the fit of
    the same inputs and labels is the same fit."""
    out, fits = [], {}
    for key in data["train"][1]:
        if key[0] == "field":  # the joint probe's
            continue
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


class Probed(NamedTuple):
    """What probing one stage gives: the thoughts and steps tables, the thoughts table's test hits ({(tensor,
    thought, label): 1/0 per test row of the thought, NaN where the label is unknown}), the joint probes' table
    (JOINT_COLUMNS, the chosen grid point per tensor, thought and task) and their test hits ({(tensor, thought,
    task): the same})."""
    thoughts: pd.DataFrame
    steps: pd.DataFrame
    hits: dict[tuple[str, int, str], np.ndarray]
    joint: pd.DataFrame
    joint_hits: dict[tuple[str, int, str], np.ndarray]


def probe_caches(caches: dict[str, ActivationCache], stage: int, probes: dict[str, Any]) -> Probed:
    """The tables and test hits of one stage's train/val/test caches (Probed)."""
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

    # the units side by side on the job's run.threads; each fit's BLAS on one thread in every worker, whatever the
    # machine's cores (joblib would give each worker cores // workers)
    jobs = Parallel(n_jobs=max(1, torch.get_num_threads()), return_as="generator", inner_max_num_threads=1)(
        delayed(_fit_unit)(load(tensor, pos), probes) for tensor, pos in units)
    thoughts, steps, hits, joint, joint_hits = [], [], {}, [], {}
    for (tensor, (position, offset)), fits in zip(units, tqdm(jobs, total=len(units), desc=f"probes stage {stage}"),
                                                  strict=True):
        for (kind, step, label), fitted in fits:
            hit = fitted.pop("hits")
            if kind == "joint":
                joint_hits[tensor, offset, label] = hit
                joint.append({"stage": stage, "tensor": tensor, "thought": offset, "task": label, **fitted})
            elif fitted.get(CONSTANT):
                hits[CONSTANT, offset, label] = hit
            elif kind == "own":
                hits[tensor, offset, label] = hit
                thoughts.append({"stage": stage, "tensor": tensor, "thought": offset, "label": label, **fitted})
            else:
                steps.append({"stage": stage, "tensor": tensor, "position": position_name(position, offset),
                              "step": step, "label": label, **fitted})
    return Probed(pd.DataFrame(thoughts, columns=COLUMNS), pd.DataFrame(steps, columns=STEP_COLUMNS), hits,
                  pd.DataFrame(joint, columns=JOINT_COLUMNS), joint_hits)


def thought_problems(index: pd.DataFrame) -> dict[int, np.ndarray]:
    """{thought: the problem id of each of its rows in `index`, in row order}: the problems of the test hits."""
    rows = index[index["position"] == "thought"].sort_values("row")
    return {int(t): group["problem_id"].to_numpy() for t, group in rows.groupby("offset")}


def linear_product(table: pd.DataFrame, hits: dict[tuple[str, int, str], np.ndarray],
                   problems: dict[int, np.ndarray]) -> dict[str, dict[str, dict[str, Any]]]:
    """{oracle task: {thought, and 'all': the share of test items on which the linear probes of every field its
    answer is made of are all right}}. Per label the probe is the one best on val at that thought (a label with one
    value in train needs no probe: it is that value); the items are the thought's test rows (the oracle's items),
    whose problem ids are `problems` (see _pooled for the intervals)."""
    chosen = best_by_thought(table)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, fields in TASK_FIELDS.items():
        per_thought = {}
        for thought in sorted({key[1] for key in hits}):
            tensors = [chosen.get(label, {}).get(str(thought), {}).get("tensor", CONSTANT) for label in fields]
            if any((tensor, thought, label) not in hits for tensor, label in zip(tensors, fields, strict=True)):
                continue
            product = np.prod([hits[tensor, thought, label] for tensor, label in zip(tensors, fields, strict=True)],
                              axis=0)
            per_thought[thought] = (product, {})
        if per_thought:
            out[task] = _pooled(per_thought, problems)
    return out


def linear_product_by_tensor(table: pd.DataFrame, hits: dict[tuple[str, int, str], np.ndarray],
                             problems: dict[int, np.ndarray]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{tensor: linear_product from that tensor's probes alone}: the product of one tensor's (an oracle's
    source's) linear probes."""
    return {tensor: linear_product(table[table["tensor"] == tensor], hits, problems)
            for tensor in _tensor_order(table["tensor"])}


def joint_probe(joint: pd.DataFrame, hits: dict[tuple[str, int, str], np.ndarray],
                problems: dict[int, np.ndarray]) -> dict[str, dict[str, dict[str, Any]]]:
    """{oracle task: {thought, and 'all': the joint probe's share of test items read right}}: per task and thought
    the tensor whose joint probe is best on val (ties: the earlier in _tensor_order), with its grid point."""
    order = {tensor: i for i, tensor in enumerate(_tensor_order(joint["tensor"]))}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, rows in joint.groupby("task", sort=False):
        per_thought = {}
        for thought, cell in rows.groupby("thought"):
            pick = cell.assign(order=cell["tensor"].map(order)).sort_values(["val_accuracy", "order"],
                                                                             ascending=[False, True]).iloc[0]
            chosen = {"tensor": pick["tensor"], "val_accuracy": float(pick["val_accuracy"]),
                      "hidden": int(pick["hidden"]), "alpha": float(pick["alpha"]), "steps": int(pick["steps"])}
            per_thought[int(thought)] = (hits[pick["tensor"], int(thought), task], chosen)
        out[str(task)] = _pooled(per_thought, problems)
    return out


def joint_probe_by_tensor(joint: pd.DataFrame, hits: dict[tuple[str, int, str], np.ndarray],
                          problems: dict[int, np.ndarray]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{tensor: joint_probe from that tensor alone}."""
    return {tensor: joint_probe(joint[joint["tensor"] == tensor], hits, problems)
            for tensor in _tensor_order(joint["tensor"])}


def _pooled(per_thought: dict[int, tuple[np.ndarray, dict[str, Any]]], problems: dict[int, np.ndarray]
            ) -> dict[str, dict[str, Any]]:
    """{thought: share, 'all': share} of per-thought test hits (NaN: no item) and what to record beside each: a
    thought's rows are one per problem (Wilson interval), 'all' pools several thoughts of a problem (bootstrap
    over problems), stats.proportion decides from the problem ids."""
    out, every, groups = {}, [], []
    for thought, (hits, extra) in per_thought.items():
        known = ~np.isnan(hits)
        out[str(thought)] = _share(hits[known], problems[thought][known]) | extra
        every.append(hits[known])
        groups.append(problems[thought][known])
    out["all"] = _share(np.concatenate(every), np.concatenate(groups))
    return out


def _share(hits: np.ndarray, problems: np.ndarray) -> dict[str, Any]:
    """Share of 1s with its 95 % interval and its kind (stats.proportion: Wilson where each problem gives one
    item, else a bootstrap over problems)."""
    low, high, kind = proportion(hits, problems)
    return {"accuracy": float(hits.mean()) if len(hits) else float("nan"), "low": low, "high": high,
            "interval": kind, "n": len(hits)}


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
    probe best on val, and where each step's labels first become readable; the linear-probe product and the joint
    probe of each oracle task over every tensor and from each tensor alone; each reported on test)."""
    caches = {split: ActivationCache(path) for split, path in cache_dirs.items()}
    table, steps, hits, joint, joint_hits = probe_caches(caches, stage, params["probes"])
    problems = thought_problems(caches["test"].index)
    for name, frame in (("table", table), ("steps_table", steps)):
        with atomic_path(outputs[name]) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.4f")
    order = [position_name(*p) for p in positions(caches["train"].index)]
    by_step = best_by_step(steps)
    heatmap(table, stage, outputs["heatmap"])
    step_heatmap(by_step, order, stage, outputs["steps_heatmap"])
    summary = {"stage": stage, "best": best_probes(table), "by_thought": best_by_thought(table),
               "positions": order, "by_step": by_step, "linear_product": linear_product(table, hits, problems),
               "linear_product_by_tensor": linear_product_by_tensor(table, hits, problems),
               "joint_probe": joint_probe(joint, joint_hits, problems),
               "joint_probe_by_tensor": joint_probe_by_tensor(joint, joint_hits, problems),
               "readable_at": READABLE,
               "readable": first_readable(by_step, order),
               "held_out": caches["test"].manifest["split"],  # the split scored: dev, or test for final figures
               "unconverged": {"max_iter": params["probes"]["max_iter"], "probes": len(table) + len(steps),
                               "stopped": int(sum((~t["converged"].astype(bool)).sum() for t in (table, steps)))},
               "provenance": describe({"probes": params["probes"]}, cache_dirs.values(), seed=run_seed(params))}
    write_text(outputs["metrics"], json.dumps(summary, indent=2) + "\n")
    write_headline(outputs["metrics"], headline(summary))
    return table, steps
