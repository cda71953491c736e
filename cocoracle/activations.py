"""Capture activations at latent-thought positions and in the answer pass into a sharded safetensors cache.

A cache directory holds shard-NNNNN.safetensors (one 2-D tensor per layer plus the input vector `thought`,
at most `shard_rows` rows each), index.parquet (one row per activation, with its labels) and
manifest.json (checkpoint hash, layers, d_model, dtype, rows, per-shard sha256, positions, params). It is
built in a temporary directory and renamed into place, so a killed run never leaves a cache that looks complete.

Rows (`position` in the index), per problem in this order:
- `thought` (offset t = 0..T-1): the latent thoughts. `thought` tensor: the vector fed in as thought t.
- `eot`, then `###` and `answer` (offset k = 0.. for the k-th token after the mark), from the same greedy
  generation: the positions whose input is <eot>, the mark's (last) token, and each generated token after the
  mark (the end token is not one). `thought` tensor: the input embedding of that token; `token`: its text.
  A generation without the mark, or cut off before its end token, gives the `eot` row only.
`layer_j` is hidden state j (0 = embeddings) at the row's position. Answer-pass rows have no thought, step or
step labels; every row carries the operands `a` and `b` (any step's labels: data.column_additions(a, b)).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from cocoracle.atomic import atomic_dir, sha256
from cocoracle.coconut import (
    ANSWER_MARK,
    NO_TOKEN_LIMIT,
    Codec,
    generate_with_thoughts,
    layout_options,
    thought_steps,
)
from cocoracle.config import InputError, run_seed
from cocoracle.data import COLUMN_LABELS, column_additions, load_split
from cocoracle.evaluate import parse_answer
from cocoracle.model import DTYPES, checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.precision import autocast, precision_of
from cocoracle.provenance import describe

THOUGHT = "thought"  # name of the input vectors in the shards (the fed-back thought at thought rows)
POSITIONS = ("thought", "eot", "###", "answer")  # index `position` values, in their order within a problem
INDEX_SCHEMA = pa.schema([
    ("row", pa.int64()), ("problem_id", pa.int64()), ("stage", pa.int8()), ("thought", pa.int16()),
    ("step", pa.int16()), ("step_text", pa.string()), ("carry_in", pa.int8()), ("carry_out", pa.int8()),
    ("digit_written", pa.int8()), ("digit_sum", pa.int8()), ("a_digit", pa.int8()), ("b_digit", pa.int8()),
    ("n_steps", pa.int8()), ("question", pa.string()), ("answer", pa.int64()), ("correct", pa.bool_()),
    ("position", pa.string()), ("offset", pa.int16()), ("token", pa.string()), ("a", pa.int64()), ("b", pa.int64()),
])


def resolve_layers(spec: str | list[int | float], n_layer: int) -> list[int]:
    """Hidden-state indices 0..n_layer (0 = embeddings): 'all', indices, or fractions of depth in (0, 1)."""
    if spec == "all":
        return list(range(n_layer + 1))
    layers = []
    for item in spec:
        index = round(item * n_layer) if isinstance(item, float) else item
        if not 0 <= index <= n_layer:
            raise InputError(f"activations.layers: {item} is outside 0..{n_layer} for this model")
        layers.append(index)
    return sorted(set(layers))


def index_rows(row: dict[str, Any], stage: int, coconut: dict[str, Any], correct: bool) -> list[dict[str, Any]]:
    """One index row per thought: the step it replaced (coconut.order `first`: thought t stands for step t // c;
    `last`: for step n - replaced + t // c) and its labels."""
    steps = thought_steps(stage, coconut["num_stages"], coconut["thoughts_per_step"], len(row["steps"]),
                          layout_options(coconut)["order"])
    columns = column_additions(row["a"], row["b"])
    out = []
    for t, step in enumerate(steps):
        labels = columns[step] if step is not None else dict.fromkeys(COLUMN_LABELS)
        out.append({"problem_id": row["id"], "stage": stage, "thought": t, "step": step,
                    "step_text": row["steps"][step] if step is not None else None, **labels,
                    **_problem(row, correct), "position": "thought", "offset": t})
    return out


def _problem(row: dict[str, Any], correct: bool) -> dict[str, Any]:
    """The index columns every row of a problem shares."""
    return {"n_steps": len(row["steps"]), "question": row["question"], "answer": row["answer"], "correct": correct,
            "a": row["a"], "b": row["b"]}


def answer_positions(generated: list[int], eot: int, mark: list[int], ended: bool) -> list[tuple[str, int, int, int]]:
    """(position, offset, decoding pass, input token id) of one row's answer-pass rows.

    Pass 0's last input is <eot>; pass i >= 1 feeds generated[i - 1]. `###` is the pass that feeds the mark's
    last token (first occurrence of the whole mark), `answer` k the one that feeds the k-th token after it, up
    to the last token before the end token. A row that never `ended` (cut off where the position table ends,
    a limit that depends on the batch's longest prompt) keeps only its <eot> row, so that no row depends on
    the batch.
    """
    out = [("eot", 0, 0, eot)]
    m = len(mark)
    found = next((i for i in range(len(generated) - m + 1) if generated[i:i + m] == mark), None)
    if found is None or not ended:
        return out
    last = found + m - 1  # index in `generated` of the mark's last token
    return out + [("###" if i == last else "answer", i - last - 1 if i > last else 0, i + 1, generated[i])
                  for i in range(last, len(generated))]


def answer_rows(row: dict[str, Any], stage: int, correct: bool, positions: list[tuple[str, int, int, int]],
                tokenizer: Any) -> list[dict[str, Any]]:
    """One index row per answer-pass position (see answer_positions): no thought, step or step labels."""
    return [{"problem_id": row["id"], "stage": stage, **_problem(row, correct), "position": position,
             "offset": offset, "token": tokenizer.decode([token])} for position, offset, _, token in positions]


class AnswerPasses:
    """Forward hook on the model during generate_with_thoughts: per decoding pass, the last column of the input
    vectors (THOUGHT) and of the collected hidden states, on the CPU in the cache dtype.

    generate_with_thoughts calls the model once for the prefix, once per thought 1..T-1 (latent_prefix), then
    once per decoding pass: pass 0 over [last thought, <eot>] (only <eot> when T == 0), pass i >= 1 over the
    single token generated at pass i - 1. So the first max(T, 1) calls are skipped, and call max(T, 1) + i is
    pass i. `check` refuses a capture whose shape disagrees (a changed generate_with_thoughts).
    """

    def __init__(self, n_thoughts: int, layers: list[int], dtype: torch.dtype):
        self.skip, self.layers, self.dtype = max(n_thoughts, 1), layers, dtype
        self.first_width = 2 if n_thoughts else 1
        self.calls, self.widths = 0, []
        self.passes: list[dict[str, torch.Tensor]] = []

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        self.calls += 1
        if self.calls <= self.skip:
            return
        embeds, hidden = kwargs.get("inputs_embeds"), getattr(output, "hidden_states", None)
        if embeds is None or hidden is None:
            raise RuntimeError("activations: a decoding pass without inputs_embeds or hidden states "
                               "(generate_with_thoughts changed)")
        self.widths.append(embeds.shape[1])
        keep = {THOUGHT: embeds[:, -1], **{f"layer_{k}": hidden[k][:, -1] for k in self.layers}}
        self.passes.append({name: v.detach().to("cpu", self.dtype) for name, v in keep.items()})

    def check(self, generated: list[list[int]], finished: torch.Tensor) -> None:
        """One pass per generated token of the longest row, plus the one that emitted the end token if all ended."""
        expected = max(map(len, generated)) + int(bool(finished.all()))
        widths = [self.first_width] + [1] * (expected - 1)
        if self.widths != widths:
            raise RuntimeError(f"activations: decoding passes of widths {self.widths}, expected {widths} "
                               "(generate_with_thoughts changed)")

    def gather(self, name: str, row: int, passes: list[int]) -> torch.Tensor:
        """(len(passes), d): one tensor of one batch row at the given decoding passes."""
        return torch.stack([self.passes[p][name][row] for p in passes])


@contextmanager
def answer_passes(model: torch.nn.Module, n_thoughts: int, layers: list[int], dtype: torch.dtype
                  ) -> Iterator[AnswerPasses]:
    """AnswerPasses hooked onto `model` for the duration of one generate_with_thoughts call."""
    capture = AnswerPasses(n_thoughts, layers, dtype)
    handle = model.register_forward_hook(capture, with_kwargs=True)
    try:
        yield capture
    finally:
        handle.remove()


class ShardWriter:
    """Buffers rows of named 2-D tensors and writes them as fixed-size safetensors shards."""

    def __init__(self, directory: Path, shard_rows: int, dtype: torch.dtype):
        self.directory, self.shard_rows, self.dtype = directory, shard_rows, dtype
        self.buffer: dict[str, list[torch.Tensor]] = {}
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, value in tensors.items():
            self.buffer.setdefault(name, []).append(value.detach().to("cpu", self.dtype))
        self.buffered += next(iter(tensors.values())).shape[0]
        while self.buffered >= self.shard_rows:
            self._write(self.shard_rows)

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)

    def _write(self, rows: int) -> None:
        merged = {name: torch.cat(parts) for name, parts in self.buffer.items()}
        path = self.directory / f"shard-{len(self.shards):05d}.safetensors"
        save_file({name: t[:rows].contiguous() for name, t in merged.items()}, str(path))
        os.chmod(path, 0o644)
        self.shards.append({"file": path.name, "rows": rows, "sha256": sha256(path)})
        self.buffer = {name: [t[rows:]] for name, t in merged.items()}
        self.buffered -= rows


def collect_activations(params: dict[str, Any], stage: int, checkpoint: str | Path, data_dir: str | Path,
                        split: str, out_dir: str | Path, device: torch.device) -> None:
    """Run `checkpoint` on `split` as at evaluation and cache the activations at every thought position and at
    the answer pass's <eot>, ### and answer tokens (see the module docstring)."""
    act = params["activations"]
    trained = checkpoint_params(checkpoint)
    coconut = trained["coconut"]
    if not 1 <= stage <= coconut["num_stages"]:
        raise InputError(f"--stage {stage}: activations exist at stages 1..{coconut['num_stages']} only")
    model, tokenizer = load_checkpoint(checkpoint, device, pick_dtype(trained["model"]["dtype"], device))
    model.eval()
    codec = Codec(tokenizer)
    layers = resolve_layers(act["layers"], model.config.num_hidden_layers)
    rows = load_split(data_dir, split)[: act["max_problems"] or None]
    layout = (stage, coconut["num_stages"], coconut["thoughts_per_step"])
    dtype, mark = DTYPES[act["dtype"]], codec.encode(ANSWER_MARK)
    names = [THOUGHT] + [f"layer_{layer}" for layer in layers]
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, act["shard_rows"], dtype)
        index = pq.ParquetWriter(tmp / "index.parquet", INDEX_SCHEMA)
        n_rows = 0
        for start in tqdm(range(0, len(rows), act["batch_size"]), desc=f"collect stage {stage} {split}"):
            chunk = rows[start:start + act["batch_size"]]
            batch = codec.batch(chunk, *layout, with_targets=False, **layout_options(coconut)).to(device)
            with (autocast(precision_of(trained["model"]), device),
                  answer_passes(model, batch.n_thoughts, layers, dtype) as passes):
                ids, out = generate_with_thoughts(model, batch, codec.eos, NO_TOKEN_LIMIT)
            passes.check(ids, out.finished)
            thoughts = {THOUGHT: out.thoughts.to("cpu", dtype),
                        **{f"layer_{layer}": out.thought_states[layer].to("cpu", dtype) for layer in layers}}
            entries, tensors = [], {name: [] for name in names}
            for r, (row, gen) in enumerate(zip(chunk, ids, strict=True)):  # a problem's thoughts, then its answer pass
                correct = parse_answer(tokenizer.decode(gen)) == row["answer"]
                positions = answer_positions(gen, codec.eot, mark, bool(out.finished[r]))
                entries += index_rows(row, stage, coconut, correct)
                entries += answer_rows(row, stage, correct, positions, tokenizer)
                for name in names:
                    tensors[name] += [thoughts[name][r], passes.gather(name, r, [p for _, _, p, _ in positions])]
            writer.add({name: torch.cat(parts) for name, parts in tensors.items()})
            for i, e in enumerate(entries):
                e["row"] = n_rows + i
            index.write_table(pa.Table.from_pylist(entries, schema=INDEX_SCHEMA))
            n_rows += len(entries)
        writer.close()
        index.close()
        manifest = {"checkpoint_sha256": sha256(Path(checkpoint) / "model.safetensors"), "stage": stage,
                    "split": split, "layers": layers, "tensors": names, "positions": list(POSITIONS),
                    "d_model": model.config.hidden_size, "dtype": act["dtype"], "rows": n_rows,
                    "shards": writer.shards, "index_sha256": sha256(tmp / "index.parquet"),
                    "params": {"activations": act, "coconut": coconut},
                    "provenance": describe({"activations": act}, [checkpoint, Path(data_dir) / f"{split}.parquet"],
                                           seed=run_seed(params))}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
