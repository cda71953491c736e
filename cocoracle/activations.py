"""Capture activations at latent-thought positions into a sharded safetensors cache.

A cache directory holds shard-NNNNN.safetensors (one 2-D tensor per layer plus the fed-back thought,
at most `shard_rows` rows each), index.parquet (one row per activation, with its labels) and
manifest.json (checkpoint hash, layers, d_model, dtype, rows, per-shard sha256, params). It is built in
a temporary directory and renamed into place, so a killed run never leaves a cache that looks complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from cocoracle.atomic import atomic_dir, sha256
from cocoracle.coconut import NO_TOKEN_LIMIT, Codec, generate_with_thoughts, layout_options, thought_steps
from cocoracle.config import InputError
from cocoracle.data import COLUMN_LABELS, column_additions, load_split
from cocoracle.evaluate import parse_answer
from cocoracle.model import DTYPES, checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.precision import autocast, precision_of
from cocoracle.provenance import describe

THOUGHT = "thought"  # name of the fed-back thought vectors in the shards
INDEX_SCHEMA = pa.schema([
    ("row", pa.int64()), ("problem_id", pa.int64()), ("stage", pa.int8()), ("thought", pa.int16()),
    ("step", pa.int16()), ("step_text", pa.string()), ("carry_in", pa.int8()), ("carry_out", pa.int8()),
    ("digit_written", pa.int8()), ("digit_sum", pa.int8()), ("a_digit", pa.int8()), ("b_digit", pa.int8()),
    ("n_steps", pa.int8()), ("question", pa.string()), ("answer", pa.int64()), ("correct", pa.bool_()),
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
                    "n_steps": len(row["steps"]), "question": row["question"], "answer": row["answer"],
                    "correct": correct})
    return out


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
    """Run `checkpoint` on `split` as at evaluation and cache every thought position's activations."""
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
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, act["shard_rows"], DTYPES[act["dtype"]])
        index = pq.ParquetWriter(tmp / "index.parquet", INDEX_SCHEMA)
        n_rows = 0
        for start in tqdm(range(0, len(rows), act["batch_size"]), desc=f"collect stage {stage} {split}"):
            chunk = rows[start:start + act["batch_size"]]
            batch = codec.batch(chunk, *layout, with_targets=False, **layout_options(coconut)).to(device)
            with autocast(precision_of(trained["model"]), device):
                ids, out = generate_with_thoughts(model, batch, codec.eos, NO_TOKEN_LIMIT)
            B, T, d = out.thoughts.shape
            writer.add({THOUGHT: out.thoughts.reshape(B * T, d),
                        **{f"layer_{layer}": out.thought_states[layer].reshape(B * T, d) for layer in layers}})
            entries = [e for row, gen in zip(chunk, ids, strict=True)
                       for e in index_rows(row, stage, coconut, parse_answer(tokenizer.decode(gen)) == row["answer"])]
            for i, e in enumerate(entries):
                e["row"] = n_rows + i
            index.write_table(pa.Table.from_pylist(entries, schema=INDEX_SCHEMA))
            n_rows += len(entries)
        writer.close()
        index.close()
        manifest = {"checkpoint_sha256": sha256(Path(checkpoint) / "model.safetensors"), "stage": stage,
                    "split": split, "layers": layers, "tensors": [THOUGHT] + [f"layer_{layer}" for layer in layers],
                    "d_model": model.config.hidden_size, "dtype": act["dtype"], "rows": n_rows,
                    "shards": writer.shards, "index_sha256": sha256(tmp / "index.parquet"),
                    "params": {"activations": act, "coconut": coconut},
                    "provenance": describe({"activations": act}, [checkpoint, Path(data_dir) / f"{split}.parquet"])}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
