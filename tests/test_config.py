"""Parameter validation: in-process checks, and bad parameter files through the `cocoracle` CLI."""
from __future__ import annotations

import copy
import itertools
import logging
import random
import subprocess

import pytest
import yaml

from cocoracle.cli import main
from cocoracle.config import (
    InputError,
    load_params,
    run_seed,
    split_counts,
    stage_epochs,
    unique_problems,
    validate_params,
)
from conftest import PARAMS_YAML, run_cli, tiny_params_dict

# ----------------------------------------------------------------------------------------------
# in-process


def test_default_params_file_is_valid():
    params = load_params(PARAMS_YAML)
    assert set(params) >= {"data", "model", "coconut", "train", "evaluate"}


def test_tiny_params_are_valid():
    params = tiny_params_dict()
    assert validate_params(copy.deepcopy(params)) == params


def test_a_run_seed_defaults_to_the_first_of_run_seeds(tmp_path):
    text = PARAMS_YAML.read_text().replace("seeds: [0]", "seeds: [4, 2]")
    (tmp_path / "params.yaml").write_text(text)
    assert run_seed(load_params(tmp_path / "params.yaml")) == 4
    assert run_seed(load_params(tmp_path / "params.yaml", seed=2)) == 2


@pytest.mark.parametrize("digits", [1, 2])
def test_unique_problems_matches_brute_force(digits):
    numbers = range(10 ** (digits - 1), 10 ** digits)
    pairs = {(min(a, b), max(a, b)) for a, b in itertools.product(numbers, numbers)}
    assert unique_problems(digits) == len(pairs)


def test_split_counts_hand_examples():
    base = {"n_train": 30, "n_val": 5, "n_dev": 5}
    assert split_counts({**base, "digit_probs": [0.25, 0.75]}) == [10, 30]
    assert split_counts({**base, "digit_probs": [1.0]}) == [40]
    assert split_counts({**base, "digit_probs": [0.0, 1.0]}) == [0, 40]


def test_split_counts_sum_exactly_and_round_to_neighbours():
    rng = random.Random(0)
    for _ in range(200):
        k = rng.randint(1, 5)
        weights = [rng.random() for _ in range(k)]
        probs = [w / sum(weights) for w in weights]
        data = {"n_train": rng.randint(1, 500), "n_val": rng.randint(1, 50), "n_dev": rng.randint(1, 50),
                "digit_probs": probs}
        total = data["n_train"] + data["n_val"] + data["n_dev"]
        counts = split_counts(data)
        assert sum(counts) == total
        for p, n in zip(probs, counts, strict=True):
            assert abs(n - p * total) < 1 + 1e-9


def test_stage_epochs_scalar_and_list():
    assert stage_epochs({"epochs": 2}, 0) == 2.0
    assert stage_epochs({"epochs": 2}, 3) == 2.0
    assert stage_epochs({"epochs": [3, 1, 0.5]}, 2) == 0.5
    assert stage_epochs({"epochs": [3, 1, 0.5]}, 0) == 3.0


def test_validate_params_error_is_one_line_naming_key():
    params = tiny_params_dict()
    params["train"]["lr"] = -1
    with pytest.raises(InputError) as info:
        validate_params(params, source="here.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("here.yaml: train.lr: ")


# ----------------------------------------------------------------------------------------------
# bad parameter files through the CLI


def _set(path: str, value):
    def mutate(p):
        *parents, last = path.split(".")
        node = p
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def _delete(path: str):
    def mutate(p):
        *parents, last = path.split(".")
        node = p
        for key in parents:
            node = node[key]
        del node[last]
    return mutate


def _many(*mutations):
    def mutate(p):
        for m in mutations:
            m(p)
    return mutate


# (case id, mutation of the valid tiny params, accepted offending keys)
BAD_PARAMS = [
    ("negative_n_train", _set("data.n_train", -5), {"data.n_train"}),
    ("n_train_not_a_number", _set("data.n_train", "many"), {"data.n_train"}),
    ("digits_contain_0", _many(_set("data.digits", [0, 2]), _set("data.digit_probs", [0.5, 0.5])), {"data.digits"}),
    ("digit_probs_not_summing_to_1", _set("data.digit_probs", [0.3, 0.3, 0.3]), {"data.digit_probs"}),
    ("digit_probs_length_mismatch", _set("data.digit_probs", [0.5, 0.5]), {"data.digit_probs"}),
    ("ood_digits_inside_digits", _set("data.ood_digits", 2), {"data.ood_digits"}),
    ("too_many_2_digit_problems",
     _many(_set("data.digits", [2]), _set("data.digit_probs", [1.0]), _set("data.n_train", 5000)),
     {"data.digit_probs", "data.n_train"}),
    ("too_many_ood_problems", _many(_set("data.ood_digits", 2), _set("data.digits", [1]),
                                    _set("data.digit_probs", [1.0]),
                                    _set("data.n_train", 20), _set("data.n_val", 5), _set("data.n_dev", 5),
                                    _set("data.n_test", 5), _set("coconut.num_stages", 2),
                                    _set("data.n_ood", 5000)), {"data.n_ood"}),
    ("ood_digits_shorter_than_digits", _many(_set("data.ood_digits", 1), _set("data.digits", [2, 3]),
                                             _set("data.digit_probs", [0.5, 0.5])), {"data.ood_digits"}),
    ("unknown_data_key", _set("data.bogus", 1), {"data.bogus"}),
    ("unknown_top_level_section", _set("extra_section", {"a": 1}), {"extra_section"}),
    ("missing_section_train", _delete("train"), {"train"}),
    ("missing_model_dtype", _delete("model.dtype"), {"model.dtype"}),
    ("num_stages_negative", _set("coconut.num_stages", -1), {"coconut.num_stages"}),
    ("thoughts_per_step_0", _set("coconut.thoughts_per_step", 0), {"coconut.thoughts_per_step"}),
    ("order_middle", _set("coconut.order", "middle"), {"coconut.order"}),
    ("answer_sees_question_a_string", _set("coconut.answer_sees_question", "no"), {"coconut.answer_sees_question"}),
    ("missing_coconut_order", _delete("coconut.order"), {"coconut.order"}),
    ("model_name_nonexistent_path", _set("model.name", "./no/such/model"), {"model.name"}),
    ("model_name_absolute_nonexistent", _set("model.name", "/no/such/model/dir"), {"model.name"}),
    ("dtype_float8", _set("model.dtype", "float8"), {"model.dtype"}),
    ("n_head_not_dividing_n_embd", _set("model.tiny.n_head", 3), {"model.tiny.n_head"}),
    ("n_positions_too_small", _set("model.tiny.n_positions", 8), {"model.tiny.n_positions"}),
    ("lr_0", _set("train.lr", 0), {"train.lr"}),
    ("weight_decay_negative", _set("train.weight_decay", -0.1), {"train.weight_decay"}),
    ("mix_prob_1_5", _set("train.mix_prob", 1.5), {"train.mix_prob"}),
    ("epochs_list_wrong_length", _set("train.epochs", [1, 1]), {"train.epochs"}),
    ("epochs_zero", _set("train.epochs", 0), {"train.epochs"}),
    ("max_steps_zero", _set("train.max_steps", 0), {"train.max_steps"}),
    ("unknown_schedule", _set("train.schedule", "exponential"), {"train.schedule"}),
    ("unknown_eval_split", _set("evaluate.splits", ["val", "bogus"]), {"evaluate.splits"}),
    ("test_scored_while_looking", _set("evaluate.splits", ["val", "dev", "test"]), {"evaluate.splits"}),
    ("held_out_not_evaluated", _set("run.held_out", "test"), {"evaluate.splits"}),
    ("held_out_val", _set("run.held_out", "val"), {"run.held_out"}),
    ("test_as_big_as_what_is_left", _many(_set("data.digits", [1]), _set("data.digit_probs", [1.0]),
                                          _set("data.n_train", 20), _set("data.n_test", 6)), {"data.digit_probs"}),
]


def _offending_key(line: str, file: str) -> str:
    """'cocoracle check-params: error: FILE: KEY: message' -> KEY."""
    assert f"{file}: " in line, line
    return line.split(f"{file}: ", 1)[1].split(": ", 1)[0]


def _assert_one_line_error(result, file: str, keys: set[str]):
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    key = _offending_key(lines[0], file)
    assert any(key == k or key.startswith(k + ".") for k in keys), (key, keys, lines[0])
    assert "Traceback" not in result.stderr


@pytest.fixture
def cli_in_process(capsys):
    """`cocoracle ...` run by its `main` in this process (a subprocess costs a Python start; the tests below this
    one's use run the real console script): a CompletedProcess with its exit status and output."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def call(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["cocoracle", *map(str, args)], code, out.out, out.err)
    yield call
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("case, mutate, keys", BAD_PARAMS, ids=[c[0] for c in BAD_PARAMS])
def test_check_params_rejects_bad_file_with_one_line(tmp_path, cli_in_process, case, mutate, keys):
    params = tiny_params_dict()
    mutate(params)
    file = tmp_path / f"{case}.yaml"
    file.write_text(yaml.safe_dump(params))
    result = cli_in_process("check-params", "--params", file)
    _assert_one_line_error(result, str(file), keys)
    assert result.stdout == ""


def test_check_params_accepts_the_tiny_params(tmp_path):
    file = tmp_path / "ok.yaml"
    file.write_text(yaml.safe_dump(tiny_params_dict()))
    result = run_cli("check-params", "--params", file)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_missing_params_file_names_the_file(tmp_path):
    file = tmp_path / "nowhere" / "params.yaml"
    assert_one_line_naming_file(file)


def assert_one_line_naming_file(file):
    """check-params on `file` fails with exactly one stderr line naming it, and no traceback."""
    result = run_cli("check-params", "--params", file)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(file) in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("text", ["data: [1, 2\nmodel: {name: tiny\n", "data:\n  seed: 0\n   digits: [1]\n",
                                  "\tdata: 1\n"], ids=["unclosed", "bad_indent", "tab"])
def test_malformed_yaml_names_the_file(tmp_path, text):
    file = tmp_path / "broken.yaml"
    file.write_text(text)
    assert_one_line_naming_file(file)


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n", "just a string\n"], ids=["empty", "list", "scalar"])
def test_params_file_that_is_not_a_mapping(tmp_path, text):
    file = tmp_path / "odd.yaml"
    file.write_text(text)
    assert_one_line_naming_file(file)


def test_binary_params_file_gives_one_line(tmp_path):
    file = tmp_path / "binary.yaml"
    file.write_bytes(b"\xff\xfe\x00\x80 not text")
    assert_one_line_naming_file(file)


def test_float_valued_count_is_rejected_with_its_key(tmp_path):
    """Counts must be written as integers: 100.0 is refused, naming the key (JSON Schema alone would accept it)."""
    params = tiny_params_dict()
    params["data"]["n_train"] = 100.0
    file = tmp_path / "float.yaml"
    file.write_text(yaml.safe_dump(params))
    result = run_cli("check-params", "--params", file)
    assert result.returncode == 2
    _assert_one_line_error(result, str(file), {"data.n_train"})


def test_generate_with_bad_params_does_no_work(tmp_path):
    params = tiny_params_dict()
    params["data"]["n_train"] = -1
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(params))
    out = tmp_path / "data-out"
    result = run_cli("generate", "--params", file, "--out", out)
    _assert_one_line_error(result, str(file), {"data.n_train"})
    assert not out.exists() or not any(out.iterdir())


def test_generate_with_good_params_writes_splits(tmp_path):
    """The counterpart of the test above: the same command with valid params does create the files."""
    file = tmp_path / "good.yaml"
    file.write_text(yaml.safe_dump(tiny_params_dict()))
    out = tmp_path / "data-out"
    result = run_cli("generate", "--params", file, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.parquet")) == ["dev.parquet", "ood.parquet", "test.parquet",
                                                             "train.parquet", "val.parquet"]


def test_evaluate_with_missing_checkpoint_names_the_path(tmp_path):
    file = tmp_path / "good.yaml"
    file.write_text(yaml.safe_dump(tiny_params_dict()))
    checkpoint = tmp_path / "no" / "such" / "checkpoint"
    result = run_cli("evaluate", "--params", file, "--stage", "0", "--checkpoint", checkpoint,
                     "--data", tmp_path / "data", "--metrics", tmp_path / "m.json",
                     "--predictions", tmp_path / "p.parquet", "--device", "cpu")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(checkpoint) in lines[0]
    assert not (tmp_path / "m.json").exists()
    assert not (tmp_path / "p.parquet").exists()
