"""Problems, chains of thought, splits and their parquet files."""
from __future__ import annotations

import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cocoracle.config import InputError
from cocoracle.data import cot_steps, load_split, make_splits, write_splits
from conftest import tiny_params_dict

STEP = re.compile(r"^(\d)\+(\d)(?:\+(\d))?=(\d+) write (\d)(?: carry (\d))?$")
FINAL = "carry 1 write 1"
SPLITS = ("train", "val", "dev", "test", "ood")


def check_steps(a: int, b: int, steps: list[str]) -> None:
    """Re-derive the column additions from the text alone and check them against a and b."""
    width = max(len(str(a)), len(str(b)))
    assert len(steps) in (width, width + 1)
    written, carry_in = [], 0
    for i, step in enumerate(steps[:width]):
        m = STEP.match(step)
        assert m, f"step {i} of {a}+{b} is malformed: {step!r}"
        x, y = int(m[1]), int(m[2])
        c = int(m[3]) if m[3] is not None else 0
        t, d = int(m[4]), int(m[5])
        carry_out = int(m[6]) if m[6] is not None else 0
        assert x == (a // 10 ** i) % 10 and y == (b // 10 ** i) % 10, (a, b, i, step)
        assert c == carry_in, (a, b, i, step)
        if m[3] is not None:
            assert c == 1, step  # the carry term only appears when there is one
        if m[6] is not None:
            assert carry_out == 1, step  # ' carry 0' is never written
        assert t == x + y + c
        assert d == t % 10
        assert carry_out == t // 10
        written.append(d)
        carry_in = carry_out
    if carry_in:
        assert len(steps) == width + 1 and steps[-1] == FINAL, (a, b, steps)
        written.append(1)
    else:
        assert len(steps) == width, (a, b, steps)
    assert int("".join(map(str, reversed(written)))) == a + b


def test_cot_steps_known_example():
    # 48 + 75: 8+5=13 write 3 carry 1; 4+7+1=12 write 2 carry 1; final carry -> 123
    assert cot_steps(48, 75) == ["8+5=13 write 3 carry 1", "4+7+1=12 write 2 carry 1", "carry 1 write 1"]
    assert cot_steps(3, 4) == ["3+4=7 write 7"]


def test_cot_steps_random_pairs_rederived():
    rng = random.Random(1234)
    pairs = []
    for da in range(1, 6):
        for db in range(1, 6):
            for _ in range(40):
                pairs.append((rng.randint(10 ** (da - 1), 10 ** da - 1), rng.randint(10 ** (db - 1), 10 ** db - 1)))
    pairs += [(0, 0), (9, 1), (1, 99999), (99999, 99999), (50000, 50000), (10000, 1), (5, 5), (0, 7)]
    saw_final_carry = saw_carry_in = False
    for a, b in pairs:
        steps = cot_steps(a, b)
        check_steps(a, b, steps)
        saw_final_carry |= steps[-1] == FINAL
        saw_carry_in |= any(STEP.match(s)[3] is not None for s in steps if s != FINAL)
    assert saw_final_carry and saw_carry_in  # both formats were exercised


def _data(**overrides):
    data = tiny_params_dict()["data"]
    data.update(overrides)
    return data


def _key(pair):
    return frozenset(pair) if pair[0] != pair[1] else frozenset([pair[0]])


@pytest.mark.parametrize("overrides", [
    {},
    {"digits": [1, 2], "digit_probs": [0.25, 0.75], "n_train": 30, "n_val": 5, "n_dev": 5, "n_test": 5,
     "ood_digits": 3, "n_ood": 12, "seed": 7},
    # every one of the 45 distinct 1-digit problems (the dense sampling path, exhausted)
    {"digits": [1], "digit_probs": [1.0], "n_train": 30, "n_val": 5, "n_dev": 5, "n_test": 5, "ood_digits": 2,
     "n_ood": 20},
])
def test_make_splits_sizes_digits_and_disjointness(overrides):
    data = _data(**overrides)
    splits = make_splits(data)
    assert set(splits) == set(SPLITS)
    assert len(splits["train"]) == data["n_train"]
    assert len(splits["val"]) == data["n_val"]
    assert len(splits["dev"]) == data["n_dev"]
    assert len(splits["test"]) == data["n_test"]
    assert len(splits["ood"]) == data["n_ood"]

    for split, pairs in splits.items():
        allowed = [data["ood_digits"]] if split == "ood" else data["digits"]
        for a, b in pairs:
            assert len(str(a)) == len(str(b)) and len(str(a)) in allowed, (split, a, b)
            assert a > 0 and b > 0

    keys = {split: [_key(p) for p in pairs] for split, pairs in splits.items()}
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks), f"duplicate unordered problem inside {split}"
    for s1, s2 in itertools_pairs(SPLITS):
        assert not set(keys[s1]) & set(keys[s2]), f"{s1} and {s2} share a problem"

    if data["digits"] == [1]:  # all 45 distinct one-digit problems, each exactly once
        everything = {_key((a, b)) for a in range(1, 10) for b in range(1, 10)}
        assert set(keys["train"] + keys["val"] + keys["dev"] + keys["test"]) == everything


def itertools_pairs(items):
    return [(x, y) for i, x in enumerate(items) for y in items[i + 1:]]


def test_make_splits_digit_mix_follows_probs():
    data = _data(digits=[1, 2], digit_probs=[0.25, 0.75], n_train=30, n_val=5, n_dev=5, n_ood=0)
    splits = make_splits(data)
    pool = splits["train"] + splits["val"] + splits["dev"]
    assert sum(len(str(a)) == 1 for a, _ in pool) == 10  # 0.25 * 40
    assert sum(len(str(a)) == 2 for a, _ in pool) == 30  # 0.75 * 40
    assert splits["ood"] == []


def test_make_splits_random_orientation_and_seed():
    data = _data(digits=[2, 3], digit_probs=[0.5, 0.5], n_train=200, n_val=10, n_dev=10, n_test=10)
    splits = make_splits(data)
    train = splits["train"]
    assert any(a < b for a, b in train) and any(a > b for a, b in train)
    assert make_splits(data) == splits
    assert make_splits({**data, "seed": data["seed"] + 1})["train"] != train


def test_the_test_split_is_drawn_apart_from_its_own_seed():
    """test is fresh: its seed moves it alone, and it never holds a problem of train, val or dev, however dense
    the problems are (2-digit: the dense path; 3-digit: rejection sampling)."""
    data = _data(digits=[2, 3], digit_probs=[0.9, 0.1], n_train=3000, n_val=200, n_dev=300, n_test=500, n_ood=5)
    splits = make_splits(data)
    other = make_splits({**data, "test_seed": data["test_seed"] + 1})
    assert other["test"] != splits["test"]
    assert all(other[split] == splits[split] for split in SPLITS if split != "test")
    seen = {_key(p) for split in ("train", "val", "dev") for p in splits[split]}
    assert not seen & {_key(p) for p in splits["test"]} and not seen & {_key(p) for p in other["test"]}
    assert sum(len(str(a)) == 2 for a, _ in splits["test"]) == 450  # the digit mix of data.digit_probs


def _files(out):
    return {split: (out / f"{split}.parquet").read_bytes() for split in SPLITS}


def test_write_splits_is_deterministic_and_seeded(tmp_path):
    data = tiny_params_dict()["data"]
    write_splits(data, tmp_path / "one")
    write_splits(data, tmp_path / "two")
    write_splits({**data, "seed": data["seed"] + 1}, tmp_path / "three")
    one, two, three = _files(tmp_path / "one"), _files(tmp_path / "two"), _files(tmp_path / "three")
    assert one == two
    for split in SPLITS:
        assert one[split] != three[split], split
    # nothing else (temporary files) is left behind
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(f"{s}.parquet" for s in SPLITS)


EXPECTED_SCHEMA = pa.schema([
    ("id", pa.int64()), ("a", pa.int64()), ("b", pa.int64()), ("n_digits", pa.int8()),
    ("question", pa.string()), ("steps", pa.list_(pa.string())), ("answer", pa.int64()), ("n_steps", pa.int8()),
])


def test_parquet_columns_types_and_content(data_dir):
    data = tiny_params_dict()["data"]
    ids = []
    for split in SPLITS:
        table = pq.read_table(data_dir / f"{split}.parquet")
        assert table.schema.remove_metadata().equals(EXPECTED_SCHEMA), (split, table.schema)
        rows = table.to_pylist()
        assert len(rows) == data[f"n_{split}"]
        for row in rows:
            a, b = row["a"], row["b"]
            m = re.fullmatch(r"(\d+) \+ (\d+) =", row["question"])
            assert m and (int(m[1]), int(m[2])) == (a, b), row["question"]
            assert row["answer"] == a + b
            assert row["n_digits"] == max(len(str(a)), len(str(b)))
            assert row["n_steps"] == len(row["steps"])
            check_steps(a, b, row["steps"])
        ids += [row["id"] for row in rows]
    assert len(ids) == len(set(ids))


def test_load_split_round_trip_and_errors(data_dir, tmp_path):
    rows = load_split(data_dir, "val")
    assert rows == pq.read_table(data_dir / "val.parquet").to_pylist()
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "train.parquet"))):
        load_split(tmp_path, "train")
    (tmp_path / "train.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "train.parquet"))) as info:
        load_split(tmp_path, "train")
    assert "\n" not in str(info.value)
