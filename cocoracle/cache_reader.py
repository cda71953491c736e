"""Streaming, verified reads from an activation cache written by cocoracle.activations."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from safetensors import safe_open

from cocoracle.atomic import is_temporary, sha256
from cocoracle.config import InputError
from cocoracle.shapes import check

MANIFEST_KEYS = ("shards", "rows", "tensors", "index_sha256")
SHARD_KEYS = {"file", "rows", "sha256"}


class ActivationCache:
    """One (stage, split) cache directory. Opening checks the manifest and every checksum."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict[str, Any] = self._read_manifest()
        self._verify()
        self.index: pd.DataFrame = pq.read_table(self.path / "index.parquet").to_pandas()
        if len(self.index) != self.manifest["rows"]:
            raise InputError(f"{self.path / 'index.parquet'}: {len(self.index)} rows, "
                             f"manifest says {self.manifest['rows']}")
        self._starts = np.cumsum([0] + [s["rows"] for s in self.manifest["shards"]])

    def _read_manifest(self) -> dict[str, Any]:
        """manifest.json, checked for the entries the reader needs; refuses a leftover temporary directory."""
        if is_temporary(self.path):
            raise InputError(f"{self.path}: a temporary directory of an unfinished or killed write, not a cache")
        if not self.path.is_dir():
            raise InputError(f"{self.path}: no such cache directory (run its collection)")
        file = self.path / "manifest.json"
        try:
            manifest = json.loads(file.read_text())
        except FileNotFoundError:
            raise InputError(f"{file}: missing (the cache is incomplete; rerun its collection)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{file}: truncated or not JSON (rerun the collection)") from None
        missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
        if missing:
            raise InputError(f"{file}: no '{missing[0]}' entry (truncated or from another tool)")
        shards = manifest["shards"]
        if not isinstance(shards, list) or not all(isinstance(s, dict) and SHARD_KEYS <= s.keys() for s in shards):
            raise InputError(f"{file}: a shard entry lacks file, rows or sha256 (truncated or from another tool)")
        return check(manifest, "manifest", file)

    def _verify(self) -> None:
        files = [(s["file"], s["sha256"]) for s in self.manifest["shards"]]
        for name, expected in files + [("index.parquet", self.manifest["index_sha256"])]:
            path = self.path / name
            if not path.is_file():
                raise InputError(f"{path}: missing (listed in the manifest; rerun the collection)")
            if sha256(path) != expected:
                raise InputError(f"{path}: checksum mismatch (truncated, corrupt or modified; rerun the collection)")

    @property
    def tensors(self) -> list[str]:
        return list(self.manifest["tensors"])

    def iter_batches(self, tensor: str, rows: np.ndarray | None = None, batch_rows: int = 8192
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row numbers, float32 array) for `tensor`, shard by shard, memory-mapped.

        `rows` selects sorted row numbers (e.g. from a filter on `index`); None means all rows.
        """
        if tensor not in self.tensors:
            raise InputError(f"{self.path}: no tensor '{tensor}' (has {', '.join(self.tensors)})")
        wanted = np.arange(self.manifest["rows"]) if rows is None else np.sort(np.asarray(rows))
        for shard, start, stop in zip(self.manifest["shards"], self._starts[:-1], self._starts[1:], strict=True):
            chosen = wanted[(wanted >= start) & (wanted < stop)]
            if not len(chosen):
                continue
            with safe_open(str(self.path / shard["file"]), framework="pt") as f:
                view = f.get_slice(tensor)
                for i in range(0, len(chosen), batch_rows):
                    part = chosen[i:i + batch_rows]
                    block = view[int(part[0] - start):int(part[-1] - start) + 1]
                    yield part, block[part - part[0]].float().numpy()

    def load(self, tensor: str, rows: np.ndarray | None = None) -> np.ndarray:
        """All selected rows of one tensor as a float32 array (row order as in `rows`, sorted)."""
        parts = [block for _, block in self.iter_batches(tensor, rows)]
        return np.concatenate(parts) if parts else np.zeros((0, self.manifest["d_model"]), np.float32)
