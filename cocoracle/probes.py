"""Linear probes over the activation cache: every tensor (layer or fed-back thought) x thought x label.

Fit on train, regularisation chosen on val, reported on test, each next to the majority-class baseline
on the same test items.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from cocoracle.atomic import atomic_path, write_text
from cocoracle.cache_reader import ActivationCache
from cocoracle.plots import pyplot, save_png
from cocoracle.provenance import describe
from cocoracle.stats import wilson

COLUMNS = ["stage", "tensor", "thought", "label", "accuracy", "baseline", "val_accuracy", "n", "C"]


def fit_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], c_grid: list[float], max_iter: int, seed: int
              ) -> dict[str, float] | None:
    """Logistic-regression probe with C picked on val; None when train has a single class."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = train, val, test
    if len(np.unique(y_tr)) < 2 or not len(y_va) or not len(y_te):
        return None
    best, best_score = None, -1.0
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        model.fit(x_tr, y_tr)
        score = model.score(x_va, y_va)
        if score > best_score:
            best, best_score, best_c = model, score, c
    values, counts = np.unique(y_tr, return_counts=True)
    majority = values[np.argmax(counts)]
    return {"accuracy": float(best.score(x_te, y_te)), "baseline": float(np.mean(y_te == majority)),
            "val_accuracy": float(best_score), "n": len(y_te), "C": float(best_c)}


def _thought_rows(cache: ActivationCache, tensor: str, thought: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Activations and index rows (in row order) of one thought position."""
    rows = cache.index[cache.index["thought"] == thought].sort_values("row")
    return cache.load(tensor, rows["row"].to_numpy()), rows


def probe_caches(caches: dict[str, ActivationCache], stage: int, probes: dict[str, Any]) -> pd.DataFrame:
    """The tidy table of probe results for one stage's train/val/test caches."""
    train = caches["train"]
    thoughts = sorted(train.index["thought"].unique())
    results = []
    for tensor, thought in tqdm([(t, th) for t in train.tensors for th in thoughts], desc=f"probes stage {stage}"):
        loaded = {split: _thought_rows(cache, tensor, thought) for split, cache in caches.items()}
        for label in probes["labels"]:
            data = []
            for split in ("train", "val", "test"):
                x, rows = loaded[split]
                known = rows[label].notna().to_numpy()
                data.append((x[known], rows[label].to_numpy()[known].astype(int)))
            fitted = fit_probe(*data, probes["C_grid"], probes["max_iter"], probes["seed"])
            if fitted is not None:
                results.append({"stage": stage, "tensor": tensor, "thought": int(thought), "label": label,
                                **fitted})
    return pd.DataFrame(results, columns=COLUMNS)


def heatmap(table: pd.DataFrame, stage: int, path: str | Path) -> None:
    """PNG: one panel per thought position, tensor x label, test accuracy above the majority baseline."""
    gain = table.assign(gain=table["accuracy"] - table["baseline"])
    thoughts = sorted(gain["thought"].unique())
    tensors = sorted(gain["tensor"].unique(), key=lambda t: (t != "thought", int(t.split("_")[1]) if "_" in t else -1))
    labels = list(dict.fromkeys(gain["label"]))
    fig, axes = pyplot().subplots(1, max(len(thoughts), 1), squeeze=False,
                                  figsize=(1.1 * len(labels) * max(len(thoughts), 1) + 2, 0.45 * len(tensors) + 2))
    for thought, ax in zip(thoughts, axes.flat, strict=True):
        panel = (gain[gain["thought"] == thought].pivot_table(index="tensor", columns="label", values="gain")
                 .reindex(index=tensors, columns=labels))
        image = ax.imshow(panel.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize="small")
        ax.set_yticks(range(len(tensors)), tensors if ax is axes.flat[0] else [""] * len(tensors))
        for (i, j), value in np.ndenumerate(panel.to_numpy()):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                        color="white" if value < 0.5 else "black")
        ax.set_title(f"thought {thought}")
    if thoughts:
        fig.colorbar(image, ax=list(axes.flat))
    fig.suptitle(f"Stage {stage}: probe test accuracy above the majority baseline, per thought position")
    save_png(fig, path)


def best_probes(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per label, the probe (tensor, thought) with the best val accuracy, and its test accuracy."""
    best = table.loc[table.groupby("label")["val_accuracy"].idxmax()] if len(table) else table
    return {row.label: _summary(row) for row in best.itertuples()}


def best_by_thought(table: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Per label and thought position, the tensor with the best val accuracy, and its test accuracy."""
    best = table.loc[table.groupby(["label", "thought"])["val_accuracy"].idxmax()] if len(table) else table
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in best.itertuples():
        out.setdefault(row.label, {})[str(row.thought)] = _summary(row)
    return out


def _summary(row: Any) -> dict[str, Any]:
    """A chosen probe: test accuracy with its 95 % Wilson interval, the baseline on the same items, where it reads."""
    low, high = wilson(round(row.accuracy * row.n), int(row.n))
    return {"accuracy": row.accuracy, "low": low, "high": high, "baseline": row.baseline, "n": int(row.n),
            "val_accuracy": row.val_accuracy, "tensor": row.tensor, "thought": int(row.thought)}


def run_probes(params: dict[str, Any], stage: int, cache_dirs: dict[str, str | Path], table_path: str | Path,
               heatmap_path: str | Path, metrics_path: str | Path) -> pd.DataFrame:
    """Probe one stage; writes the CSV table, the heatmap and a JSON summary (per label, and per label and
    thought, the probe with the best val accuracy, reported on test with its interval)."""
    caches = {split: ActivationCache(path) for split, path in cache_dirs.items()}
    table = probe_caches(caches, stage, params["probes"])
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    heatmap(table, stage, heatmap_path)
    summary = {"stage": stage, "best": best_probes(table), "by_thought": best_by_thought(table),
               "provenance": describe({"probes": params["probes"]}, cache_dirs.values())}
    write_text(metrics_path, json.dumps(summary, indent=2) + "\n")
    return table
