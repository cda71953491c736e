"""Answer accuracy of a Coconut checkpoint: free generation (greedy) and teacher-forced, by step count."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from cocoracle.atomic import atomic_path, write_text
from cocoracle.coconut import Codec, generate_with_thoughts, layout_options, teacher_forced_correct
from cocoracle.config import InputError, run_seed
from cocoracle.data import load_split
from cocoracle.headline import evaluation as headline
from cocoracle.headline import write as write_headline
from cocoracle.model import checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.precision import autocast, precision_of
from cocoracle.provenance import describe

ANSWER_MARK = "###"
PREDICTIONS_SCHEMA = pa.schema([
    ("split", pa.string()), ("id", pa.int64()), ("n_steps", pa.int8()), ("generated", pa.string()),
    ("predicted", pa.int64()), ("answer", pa.int64()), ("correct", pa.bool_()), ("teacher_forced", pa.bool_()),
    ("truncated", pa.bool_()), ("not_marker_first", pa.bool_()),
])


def parse_answer(text: str) -> int | None:
    """The number after the last '###'; None when there is none or it does not fit an int64 column."""
    if ANSWER_MARK not in text:
        return None
    digits = re.sub(r"\s", "", text.rsplit(ANSWER_MARK, 1)[1])
    return int(digits) if re.fullmatch(r"[0-9]{1,18}", digits) else None


def marker_first(text: str) -> bool:
    """Whether a generation begins with '###' (the answer pass, with no text step before it)."""
    return text.lstrip().startswith(ANSWER_MARK)


def predict(model: PreTrainedModel, codec: Codec, rows: list[dict[str, Any]], stage: int, coconut: dict[str, Any],
            batch_size: int, extra_tokens: int, desc: str = "eval") -> list[dict[str, Any]]:
    """Per problem: generated text, parsed answer, free-generation and teacher-forced correctness, truncation,
    and `not_marker_first`: the gold text after <eot> begins with `###` (no text step left: the all-latent
    stage, or order `last`) but the generation does not.

    A problem may decode as many tokens as its gold solution needs (remaining steps, `###`, answer, end token)
    plus `extra_tokens`, and never past the position table; a generation that has not ended by then is cut
    there and marked truncated. Decoding is causal per row, so the budget of one problem does not depend on
    the others in its batch.
    """
    device = next(model.parameters()).device
    layout = (stage, coconut["num_stages"], coconut["thoughts_per_step"])
    results = []
    model.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        chunk = rows[start:start + batch_size]
        prompt = codec.batch(chunk, *layout, with_targets=False, **layout_options(coconut)).to(device)
        gold = codec.batch(chunk, *layout, **layout_options(coconut)).to(device)
        budgets = (gold.suffix_mask.sum(1) - 1 + extra_tokens).tolist()  # <eot> is given, not generated
        marked = (gold.suffix_ids[:, 1] == codec.encode(" " + ANSWER_MARK)[0]).tolist()  # gold: ### first
        generated, output = generate_with_thoughts(model, prompt, codec.eos, max(budgets), return_states=False)
        forced = teacher_forced_correct(model, gold).tolist()
        for row, ids, tf, ended, budget, due in zip(chunk, generated, forced, output.finished.tolist(), budgets,
                                                    marked, strict=True):
            ended = ended and len(ids) < budget  # its end token was within its own budget
            text = codec.tokenizer.decode(ids[:budget])
            answer = parse_answer(text)
            results.append({"id": row["id"], "n_steps": row["n_steps"], "generated": text, "predicted": answer,
                            "answer": row["answer"], "correct": answer == row["answer"], "teacher_forced": tf,
                            "truncated": not ended, "not_marker_first": due and not marker_first(text)})
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and by number of reasoning steps, how many generations were cut off and (overall) how
    many should have begun with `###` and did not."""
    def block(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rs)
        return {"accuracy": sum(r["correct"] for r in rs) / max(n, 1),
                "teacher_forced": sum(r["teacher_forced"] for r in rs) / max(n, 1), "n": n,
                "truncated": sum(r["truncated"] for r in rs)}
    by_steps: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_steps[r["n_steps"]].append(r)
    return {**block(results), "not_marker_first": sum(r.get("not_marker_first", False) for r in results),
            "by_steps": {str(k): block(v) for k, v in sorted(by_steps.items())}}


def evaluate_stage(params: dict[str, Any], stage: int, checkpoint: str | Path, data_dir: str | Path,
                   metrics_path: str | Path, predictions_path: str | Path, device: torch.device) -> dict[str, Any]:
    """Evaluate a checkpoint with stage `stage`'s layout on the configured splits.

    The thought layout, dtype and precision come from the params the checkpoint was trained with, so this step
    depends on the `evaluate` section alone.
    """
    ev = params["evaluate"]
    trained = checkpoint_params(checkpoint)
    model, tokenizer = load_checkpoint(checkpoint, device, pick_dtype(trained["model"]["dtype"], device))
    codec = Codec(tokenizer)
    if not 0 <= stage <= trained["coconut"]["num_stages"]:
        raise InputError(f"--stage {stage}: {checkpoint} was trained with stages 0..{trained['coconut']['num_stages']}")
    metrics: dict[str, Any] = {"stage": stage}
    inputs = [checkpoint, *(Path(data_dir) / f"{split}.parquet" for split in ev["splits"])]
    predictions: list[dict[str, Any]] = []
    for split in ev["splits"]:
        rows = load_split(data_dir, split)
        if not rows:
            continue
        with autocast(precision_of(trained["model"]), device):
            results = predict(model, codec, rows, stage, trained["coconut"], ev["batch_size"], ev["extra_tokens"],
                              desc=f"stage {stage} {split}")
        metrics[split] = summarize(results)
        predictions += [{"split": split, **r} for r in results]
    with atomic_path(predictions_path) as tmp:
        pq.write_table(pa.Table.from_pylist(predictions, schema=PREDICTIONS_SCHEMA), tmp)
    metrics["provenance"] = describe({"evaluate": ev}, inputs, seed=run_seed(params))
    write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    write_headline(metrics_path, headline(metrics))
    return metrics
