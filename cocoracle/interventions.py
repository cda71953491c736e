"""Interventions on the latent thoughts: does the answer use what a thought holds?

Two kinds, each on one thought t at a time, during the greedy decoding that evaluation runs:

- ablation: thought t (the vector fed back as its input) is replaced by its mean over the problems, by zero, or by
  another problem's thought t (the problem a seeded number of places on: never its own); scored as answer
  accuracy per answer column;
- patching: a donor problem differs from the recipient only in column c's digits; thought t is taken from the
  donor, either its fed-back input only (`input`) or its states at every layer (`layers`: the input and every
  block's output at that position, hence also the keys and values later positions read there); scored as the
  share of pairs whose answer column c (and c + 1, through the carry) becomes the donor's.

Both work through forward hooks on the model, so the Coconut code paths stay those of evaluation:
generate_with_thoughts calls the model once for the prefix, then once per pass whose first column is thought t's
input, t = 0..T-1 (the last thought shares its pass with <eot>): the call after the prefix's t + 1 calls.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from cocoracle.atomic import atomic_path, write_text
from cocoracle.config import InputError, run_seed
from cocoracle.data import column_additions, cot_steps, load_split, question_text

ABLATIONS = ("mean", "zero", "other")
PATCHES = ("input", "layers")


def decoder_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's transformer blocks: its ModuleList of config.num_hidden_layers modules."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"no list of {n} transformer blocks in {type(model).__name__}")


@dataclass
class ThoughtEdit:
    """What happens to thought t in one decoding run: recorded (`record`), or replaced per batch row by `inputs`
    (B, d) and, when given, every block's output at that position by `blocks` (n_layer tensors of (B, d))."""

    thought: int
    inputs: torch.Tensor | None = None
    blocks: list[torch.Tensor] | None = None
    record: bool = False
    recorded_inputs: torch.Tensor | None = None
    recorded_blocks: list[torch.Tensor] = field(default_factory=list)
    calls: int = 0

    def due(self) -> bool:
        """Whether the model call in progress (counted from 1: the prefix) holds thought t at column 0."""
        return self.calls == self.thought + 2

    def before_model(self, module, args, kwargs):
        self.calls += 1
        if not self.due():
            return None
        embeds = kwargs["inputs_embeds"]
        if self.record:
            self.recorded_inputs = embeds[:, 0].detach().clone()
            return None
        if self.inputs is None:
            return None
        embeds = embeds.clone()
        embeds[:, 0] = self.inputs.to(embeds.dtype)
        return args, {**kwargs, "inputs_embeds": embeds}

    def after_block(self, index: int):
        def hook(module, args, output):
            if not self.due():
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            if self.record:
                self.recorded_blocks.append(hidden[:, 0].detach().clone())
                return None
            if self.blocks is None:
                return None
            hidden = hidden.clone()
            hidden[:, 0] = self.blocks[index].to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook


@contextmanager
def edited(model: PreTrainedModel, edit: ThoughtEdit) -> Iterator[ThoughtEdit]:
    """`edit` hooked onto the model for one generate_with_thoughts call."""
    handles = [model.register_forward_pre_hook(edit.before_model, with_kwargs=True)]
    if edit.record or edit.blocks is not None:
        handles += [block.register_forward_hook(edit.after_block(i))
                    for i, block in enumerate(decoder_blocks(model))]
    try:
        yield edit
    finally:
        for handle in handles:
            handle.remove()


def answer_digit(answer: int | None, column: int) -> int | None:
    """The answer's digit in column c (0: units); None without an answer."""
    return None if answer is None else (answer // 10 ** column) % 10


def ablated_thoughts(thoughts: torch.Tensor, rows: range, mode: str, shift: int) -> torch.Tensor:
    """The replacements of one thought for the problems `rows` (indices into `thoughts`, that thought's (N, d)
    vectors over all N problems): their mean, zero, or the thought of the problem `shift` places on (1 <= shift
    < N: never a problem's own)."""
    if mode == "mean":
        return thoughts.mean(0, keepdim=True).expand(len(rows), -1)
    if mode == "zero":
        return thoughts.new_zeros(len(rows), thoughts.shape[1])
    if mode == "other":
        if not 1 <= shift < len(thoughts):
            raise ValueError(f"ablation 'other': shift must be within 1..{len(thoughts) - 1}, got {shift}")
        return thoughts[[(i + shift) % len(thoughts) for i in rows]]
    raise ValueError(f"ablation: one of {', '.join(ABLATIONS)}, got {mode!r}")


def _with_digits(a: int, b: int, column: int, x: int, y: int) -> tuple[int, int]:
    """(a, b) with their digits in `column` set to x and y."""
    unit = 10 ** column
    return a + (x - (a // unit) % 10) * unit, b + (y - (b // unit) % 10) * unit


def donor_for(row: dict[str, Any], column: int, rng: random.Random) -> dict[str, Any] | None:
    """A problem that differs from `row` only in column c's digits and writes another digit there, with the same
    number of digits and reasoning steps (so the same thought layout); None if none exists."""
    a, b = row["a"], row["b"]
    width = max(len(str(a)), len(str(b)))
    if column >= width:
        return None
    carry_in = column_additions(a, b)[column]["carry_in"]
    x0, y0 = (a // 10 ** column) % 10, (b // 10 ** column) % 10
    lowest = 1 if column == width - 1 else 0  # the leading digits stay non-zero: the widths do not change
    choices = [(x, y) for x in range(lowest if len(str(a)) == width else 0, 10)
               for y in range(lowest if len(str(b)) == width else 0, 10)
               if (x + y + carry_in) % 10 != (x0 + y0 + carry_in) % 10]
    rng.shuffle(choices)
    for x, y in choices:
        a2, b2 = _with_digits(a, b, column, x, y)
        if len(str(a2)) != len(str(a)) or len(str(b2)) != len(str(b)):
            continue
        steps = cot_steps(a2, b2)
        if len(steps) == len(row["steps"]):
            return {"id": -1, "a": a2, "b": b2, "n_digits": row["n_digits"], "question": question_text(a2, b2),
                    "steps": steps, "answer": a2 + b2, "n_steps": len(steps)}
    return None


@dataclass
class Setting:
    """Where the interventions run: the model, its codec, the stage's layout and decoding budget."""

    model: PreTrainedModel
    codec: Any
    stage: int
    coconut: dict[str, Any]
    batch_size: int
    extra_tokens: int

    def batches(self, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(rows), self.batch_size):
            yield rows[start:start + self.batch_size]

    @torch.no_grad()
    def answers(self, rows: list[dict[str, Any]], edit: ThoughtEdit | None = None
                ) -> tuple[list[int | None], torch.Tensor]:
        """Each problem's parsed answer under `edit` (one batch), and its thoughts (B, T, d) as fed back."""
        from cocoracle.coconut import generate_with_thoughts, layout_options
        from cocoracle.evaluate import parse_answer

        layout = (self.stage, self.coconut["num_stages"], self.coconut["thoughts_per_step"])
        device = next(self.model.parameters()).device
        options = layout_options(self.coconut)
        prompt = self.codec.batch(rows, *layout, with_targets=False, **options).to(device)
        budget = int(self.codec.batch(rows, *layout, **options).suffix_mask.sum(1).max()) - 1 + self.extra_tokens
        if edit is None:
            ids, out = generate_with_thoughts(self.model, prompt, self.codec.eos, budget, return_states=False)
        else:
            with edited(self.model, edit):
                ids, out = generate_with_thoughts(self.model, prompt, self.codec.eos, budget, return_states=False)
        return [parse_answer(self.codec.tokenizer.decode(g)) for g in ids], out.thoughts


def _columns(row: dict[str, Any]) -> range:
    """The answer's columns (0: units): one per reasoning step."""
    return range(row["n_steps"])


def ablation_rows(setting: Setting, rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Per thought, ablation (and `none`: no ablation) and answer column: how many problems have that column, and
    how many of them write its gold digit."""
    clean = [setting.answers(chunk) for chunk in setting.batches(rows)]
    thoughts = torch.cat([t for _, t in clean])
    shift = random.Random(seed).randrange(1, len(rows))  # `other`: each problem gets the thought of another
    counts: dict[tuple[int, str, int], list[int]] = {}

    def score(chunk, answers, t, mode):
        for row, answer in zip(chunk, answers, strict=True):
            for c in _columns(row):
                hit = answer_digit(answer, c) == answer_digit(row["answer"], c)
                n_correct = counts.setdefault((t, mode, c), [0, 0])
                n_correct[0] += 1
                n_correct[1] += int(hit)

    start = 0
    for chunk, (answers, _) in zip(setting.batches(rows), clean, strict=True):
        indices = range(start, start + len(chunk))
        for t in range(thoughts.shape[1]):
            score(chunk, answers, t, "none")
            for mode in ABLATIONS:
                vectors = ablated_thoughts(thoughts[:, t], indices, mode, shift)
                score(chunk, setting.answers(chunk, ThoughtEdit(t, inputs=vectors))[0], t, mode)
        start += len(chunk)
    return [{"thought": t, "ablation": mode, "column": c, "n": n, "correct": k}
            for (t, mode, c), (n, k) in sorted(counts.items())]


def patching_rows(setting: Setting, rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Per thought, patch (input / layers) and column c: the pairs (recipient, donor differing only in column c),
    and how many of them write, in column c of the patched run, the donor's digit (`to_donor`), the recipient's
    unpatched digit (`unchanged`); `if_ignored`: how many unpatched recipients already write the donor's digit
    (the share expected if the answer ignored the thought); and over the pairs whose carry out of column c
    differs, the same for column c + 1 (`carry_pairs`, `carry_to_donor`, `carry_if_ignored`)."""
    rng = random.Random(seed)
    n_thoughts = setting.stage * setting.coconut["thoughts_per_step"]
    counts: dict[tuple[int, str, int], dict[str, int]] = {}
    widest = max(len(str(max(r["a"], r["b"]))) for r in rows)
    for c in range(widest):
        pairs = [(row, donor) for row in rows if (donor := donor_for(row, c, rng)) is not None]
        for start in range(0, len(pairs), setting.batch_size):
            chunk = pairs[start:start + setting.batch_size]
            recipients, donors = [r for r, _ in chunk], [d for _, d in chunk]
            unpatched, _ = setting.answers(recipients)
            for t in range(n_thoughts):
                recorded = ThoughtEdit(t, record=True)
                setting.answers(donors, recorded)
                for patch in PATCHES:
                    edit = ThoughtEdit(t, inputs=recorded.recorded_inputs,
                                       blocks=recorded.recorded_blocks if patch == "layers" else None)
                    patched, _ = setting.answers(recipients, edit)
                    tally = counts.setdefault((t, patch, c), dict.fromkeys(
                        ("pairs", "to_donor", "unchanged", "if_ignored", "carry_pairs", "carry_to_donor",
                         "carry_if_ignored"), 0))
                    for recipient, donor, before, after in zip(recipients, donors, unpatched, patched, strict=True):
                        wanted = answer_digit(donor["answer"], c)
                        tally["pairs"] += 1
                        tally["to_donor"] += int(answer_digit(after, c) == wanted)
                        tally["unchanged"] += int(answer_digit(after, c) == answer_digit(before, c))
                        tally["if_ignored"] += int(answer_digit(before, c) == wanted)
                        carries = (column_additions(recipient["a"], recipient["b"])[c]["carry_out"],
                                   column_additions(donor["a"], donor["b"])[c]["carry_out"])
                        if carries[0] != carries[1]:
                            wanted = answer_digit(donor["answer"], c + 1)
                            tally["carry_pairs"] += 1
                            tally["carry_to_donor"] += int(answer_digit(after, c + 1) == wanted)
                            tally["carry_if_ignored"] += int(answer_digit(before, c + 1) == wanted)
    return [{"thought": t, "patch": patch, "column": c, **tally} for (t, patch, c), tally in sorted(counts.items())]


def intervene_stage(params: dict[str, Any], stage: int, checkpoint: str | Path, data_dir: str | Path,
                    ablation_table: str | Path, patching_table: str | Path, metrics_path: str | Path,
                    device: torch.device) -> dict[str, Any]:
    """Ablate and patch every thought of one latent stage's checkpoint on run.held_out's problems (the first
    interventions.max_problems); write both tables (CSV, one row per thought, intervention and answer column, with
    its share) and a JSON of both."""
    from cocoracle.coconut import Codec
    from cocoracle.model import checkpoint_params, load_checkpoint, pick_dtype
    from cocoracle.precision import autocast, precision_of
    from cocoracle.provenance import describe

    trained = checkpoint_params(checkpoint)
    if not 1 <= stage <= trained["coconut"]["num_stages"]:
        raise InputError(f"--stage {stage}: {checkpoint} has latent stages 1..{trained['coconut']['num_stages']}")
    model, tokenizer = load_checkpoint(checkpoint, device, pick_dtype(trained["model"]["dtype"], device))
    model.eval()
    settings, split = params["interventions"], params["run"]["held_out"]
    rows = load_split(data_dir, split)[:settings["max_problems"]]
    if len(rows) < 2:
        raise InputError(f"{data_dir}/{split}.parquet: interventions need at least two problems, got {len(rows)}")
    seed = run_seed(params)
    setting = Setting(model, Codec(tokenizer), stage, trained["coconut"], settings["batch_size"],
                      settings["extra_tokens"])
    with autocast(precision_of(trained["model"]), device), tqdm(total=2, desc=f"intervene stage {stage}") as bar:
        ablation = pd.DataFrame(ablation_rows(setting, rows, seed))
        bar.update()
        patching = pd.DataFrame(patching_rows(setting, rows, seed))
        bar.update()
    ablation["accuracy"] = ablation["correct"] / ablation["n"]
    for key in ("to_donor", "unchanged", "if_ignored"):
        patching[f"{key}_share"] = patching[key] / patching["pairs"]
    for key in ("carry_to_donor", "carry_if_ignored"):
        patching[f"{key}_share"] = (patching[key] / patching["carry_pairs"]).where(patching["carry_pairs"] > 0)
    for table, path in ((ablation, ablation_table), (patching, patching_table)):
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    inputs = [checkpoint, Path(data_dir) / f"{split}.parquet"]
    metrics = {"stage": stage, "split": split, "problems": len(rows),
               "ablation": ablation.to_dict("records"),
               "patching": json.loads(patching.to_json(orient="records")),  # NaN (no carry pair) as null
               "provenance": describe({"interventions": settings, "held_out": split}, inputs, seed=seed)}
    write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return metrics
