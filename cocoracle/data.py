"""Multi-digit addition problems with a carry chain-of-thought, in disjoint parquet splits.

train, val and dev are drawn together from data.seed; test is drawn apart, from data.test_seed, among the problems
none of them holds, so that it stays fresh however often dev is looked at; ood has longer operands."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocoracle.atomic import atomic_path
from cocoracle.config import InputError, split_counts, unique_problems

COLUMN_LABELS = ("carry_in", "carry_out", "digit_written", "digit_sum", "a_digit", "b_digit")

SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("a", pa.int64()),
    ("b", pa.int64()),
    ("n_digits", pa.int8()),
    ("question", pa.string()),
    ("steps", pa.list_(pa.string())),
    ("answer", pa.int64()),
    ("n_steps", pa.int8()),
])


def question_text(a: int, b: int) -> str:
    return f"{a} + {b} ="


def column_additions(a: int, b: int) -> list[dict[str, int]]:
    """What each reasoning step computes, least-significant column first; a final carry is a step of its own
    (digits 0 + 0, carry in 1). Keys: COLUMN_LABELS."""
    width, columns, carry = max(len(str(a)), len(str(b))), [], 0
    while len(columns) < width or carry:
        i = len(columns)
        x, y = (a // 10**i) % 10, (b // 10**i) % 10
        total = x + y + carry
        columns.append({"carry_in": carry, "carry_out": total // 10, "digit_written": total % 10, "digit_sum": total,
                        "a_digit": x, "b_digit": y})
        carry = total // 10
    return columns


def cot_steps(a: int, b: int) -> list[str]:
    """The column additions as text, e.g. '4+8+1=13 write 3 carry 1'; a final carry is 'carry 1 write 1'."""
    width, steps = max(len(str(a)), len(str(b))), []
    for i, c in enumerate(column_additions(a, b)):
        if i == width:
            steps.append("carry 1 write 1")
            continue
        added = f"{c['a_digit']}+{c['b_digit']}" + (f"+{c['carry_in']}" if c["carry_in"] else "")
        carry = f" carry {c['carry_out']}" if c["carry_out"] else ""
        steps.append(f"{added}={c['digit_sum']} write {c['digit_written']}{carry}")
    return steps


def _sample_pairs(rng: np.random.Generator, digits: int, n: int,
                  taken: frozenset[tuple[int, int]] = frozenset()) -> list[tuple[int, int]]:
    """n distinct unordered pairs of `digits`-digit numbers, none of them in `taken` (pairs (a, b) with a <= b),
    in random order and orientation."""
    lo, m = 10 ** (digits - 1), 9 * 10 ** (digits - 1)
    if n == 0:
        return []
    if unique_problems(digits) <= 4 * (n + len(taken)):  # dense: draw from the full list of pairs
        i, j = np.triu_indices(m)
        if taken:
            free = np.array([(x + lo, y + lo) not in taken for x, y in zip(i, j, strict=True)])
            i, j = i[free], j[free]
        pick = rng.choice(len(i), size=n, replace=False)
        pairs = np.stack([i[pick], j[pick]], axis=1)
    else:  # sparse: rejection sampling
        seen: set[tuple[int, int]] = {(x - lo, y - lo) for x, y in taken}
        rows = []
        while len(rows) < n:
            for x, y in rng.integers(0, m, size=(2 * (n - len(rows)), 2)):
                key = (min(x, y), max(x, y))
                if key not in seen:
                    seen.add(key)
                    rows.append(key)
                    if len(rows) == n:
                        break
        pairs = np.array(rows)
    flip = rng.random(n) < 0.5
    pairs[flip] = pairs[flip][:, ::-1]
    return [(int(x) + lo, int(y) + lo) for x, y in pairs]


def make_splits(data: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """Disjoint train/val/dev splits (shuffled mix of digit counts), the OOD split, and the test split, drawn
    apart from its own seed among the in-distribution problems the others do not hold (in that order: ids follow
    it)."""
    rng = np.random.default_rng(data["seed"])
    pool: list[tuple[int, int]] = []
    for d, n in zip(data["digits"], split_counts(data), strict=True):
        pool += _sample_pairs(rng, d, n)
    order = rng.permutation(len(pool))
    pool = [pool[i] for i in order]
    n_train, n_val = data["n_train"], data["n_val"]
    splits = {"train": pool[:n_train], "val": pool[n_train:n_train + n_val], "dev": pool[n_train + n_val:],
              "ood": _sample_pairs(rng, data["ood_digits"], data["n_ood"])}
    taken = frozenset((min(a, b), max(a, b)) for a, b in pool)
    test_rng = np.random.default_rng(data["test_seed"])
    test: list[tuple[int, int]] = []
    for d, n in zip(data["digits"], split_counts(data, data["n_test"]), strict=True):
        lo, hi = 10 ** (d - 1), 10 ** d
        test += _sample_pairs(test_rng, d, n, frozenset(p for p in taken if lo <= p[0] < hi))
    splits["test"] = [test[i] for i in test_rng.permutation(len(test))]
    return splits


def problems_table(pairs: list[tuple[int, int]], first_id: int) -> pa.Table:
    steps = [cot_steps(a, b) for a, b in pairs]
    return pa.table({
        "id": pa.array(range(first_id, first_id + len(pairs)), pa.int64()),
        "a": pa.array([a for a, _ in pairs], pa.int64()),
        "b": pa.array([b for _, b in pairs], pa.int64()),
        "n_digits": pa.array([max(len(str(a)), len(str(b))) for a, b in pairs], pa.int8()),
        "question": pa.array([question_text(a, b) for a, b in pairs], pa.string()),
        "steps": pa.array(steps, pa.list_(pa.string())),
        "answer": pa.array([a + b for a, b in pairs], pa.int64()),
        "n_steps": pa.array([len(s) for s in steps], pa.int8()),
    }, schema=SCHEMA)


def write_splits(data: dict[str, Any], out_dir: str | Path) -> None:
    """Write <split>.parquet for every split; ids are unique across splits."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_id = 0
    for split, pairs in make_splits(data).items():
        with atomic_path(out_dir / f"{split}.parquet") as tmp:
            pq.write_table(problems_table(pairs, first_id), tmp, compression="zstd")
        first_id += len(pairs)


def load_split(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Rows of one split as dicts; a one-line error names a missing or unreadable file."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise InputError(f"{path}: file not found (run `cocoracle generate` first)")
    try:
        table = pq.read_table(path)
        missing = [name for name in SCHEMA.names if name not in table.column_names]
        if missing:
            raise InputError(f"{path}: no column '{missing[0]}'; a split written by `cocoracle generate` has "
                             f"{', '.join(SCHEMA.names)}")
        for field in SCHEMA:
            try:
                table.column(field.name).cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InputError(f"{path}: column {field.name!r}: {table.schema.field(field.name).type} values, where "
                                 f"`cocoracle generate` writes {field.type}") from None
        return table.select(SCHEMA.names).cast(SCHEMA).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: unreadable parquet ({str(exc).splitlines()[0]}); rerun `cocoracle generate`"
                         ) from None
