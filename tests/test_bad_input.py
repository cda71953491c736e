"""Bad input of every kind stops `cocoracle` before any work: exit status 2 and one stderr line naming the key,
argument or file and saying what is allowed; no output is created.

Complements tests/test_config.py (which covers other bad params values and malformed YAML through check-params).
Each row: (id, how to make the bad input in the test's directory, command, expected text). In commands and
expected texts, {tmp} is that directory, {params} its params.yaml (the tiny params unless the row changes it),
{config} its config.yaml (the repository's), {data} a data directory, {ckpt} a checkpoint directory, and {out}
where outputs would go: it must not exist afterwards.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cocoracle.cli import main
from cocoracle.report import ORACLE_COLUMNS
from conftest import REPO, tiny_params_dict

Make = Callable[[Path, Path], None]  # (test directory, the tiny data directory) -> None
DELETE = object()  # as a value: remove the key


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    if value is DELETE:
        del tree[last]
    else:
        tree[last] = value


def params(key: str, value: Any, **others: Any) -> Make:
    """params.yaml with one key set (or deleted), and any `others` (dots written as __) set with it."""
    def make(tmp: Path, data: Path) -> None:
        p = tiny_params_dict()
        for k, v in {key: value, **{k.replace("__", "."): v for k, v in others.items()}}.items():
            _set(p, k, v)
        (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    return make


def config(key: str, value: Any) -> Make:
    """config.yaml with one key set (or deleted)."""
    def make(tmp: Path, data: Path) -> None:
        c = yaml.safe_load((REPO / "config.yaml").read_text())
        _set(c, key, value)
        (tmp / "config.yaml").write_text(yaml.safe_dump(c))
    return make


def text(name: str, content: str | None) -> Make:
    """A file with this content; None removes it."""
    def make(tmp: Path, data: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.unlink()
        else:
            path.write_text(content)
    return make


def checkpoint(with_params: bool = True) -> Make:
    """A checkpoint directory without weights: params.json (the tiny params at stage 3), or nothing."""
    def make(tmp: Path, data: Path) -> None:
        (tmp / "ckpt").mkdir()
        if with_params:
            (tmp / "ckpt" / "params.json").write_text(json.dumps({**tiny_params_dict(), "stage": 3}))
    return make


def data_with(split: str, content: str | pa.Table | None) -> Make:
    """The tiny data with one split's parquet replaced by text, by another table, or removed (None)."""
    def make(tmp: Path, data: Path) -> None:
        shutil.copytree(data, tmp / "data")
        path = tmp / "data" / f"{split}.parquet"
        if content is None:
            path.unlink()
        elif isinstance(content, str):
            path.write_text(content)
        else:
            pq.write_table(content, path)
    return make


def data_column(split: str, column: str, values: pa.Array) -> Make:
    """The tiny data with one column of one split replaced."""
    def make(tmp: Path, data: Path) -> None:
        shutil.copytree(data, tmp / "data")
        path = tmp / "data" / f"{split}.parquet"
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.column_names.index(column), column, values), path)
    return make


def seed_run_with_headline(headline: str) -> Make:
    """A seed's results directory (tiny params: stages 0..3, oracles at 1..3) whose files are all well formed,
    but for the first headline file."""
    def make(tmp: Path, data: Path) -> None:
        run = tmp / "run"
        split = {"accuracy": 0.5, "teacher_forced": 0.5, "n": 10}
        cell = {"accuracy": 0.5, "low": 0.4, "high": 0.6}
        probes = {"by_thought": {}, "readable": {}, "readable_at": 0.9,
                  "unconverged": {"max_iter": 1, "probes": 1, "stopped": 0}, "linear_product": {"step": {"all": cell}}}
        files = {f"eval/stage-{k}": {"stage": k, "dev": split} for k in range(4)}
        files |= {f"probes/stage-{k}": {"stage": k, **probes} for k in range(1, 4)}
        files |= {f"oracle/stage-{k}": {"stage": k, "self_answer_accuracy": {"before": 0.5, "after": 0.5}}
                  for k in range(1, 4)}
        files |= {f"interventions/stage-{k}": {"stage": k, "split": "dev", "problems": 10, "ablation": [],
                                               "patching": []} for k in range(1, 4)}
        for name, content in files.items():
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / f"{name}.json").write_text(json.dumps(content))
            (run / f"{name}-headline.json").write_text("{}")
        for k in range(1, 4):
            (run / f"oracle/stage-{k}.csv").write_text(
                "oracle,condition,task,thought,exact_match,exact_match_best_baseline\nself,oracle,step,all,0.5,"
                "shuffled\nself,shuffled,step,all,0.1,\n")
        (run / "eval/stage-0-headline.json").write_text(headline)
    return make


def nothing(tmp: Path, data: Path) -> None:
    """The defaults are the input (the bad part is in the command)."""


GENERATE = ["generate", "--params", "{params}", "--out", "{out}"]
DVC_YAML = ["dvc-yaml", "--params", "{params}", "--config", "{config}", "--out", "{out}/dvc.yaml"]
SEED_REPORT = ["seed-report", "--params", "{params}", "--run", "0={tmp}/run", "--out", "{out}/report.md", "--table",
               "{out}/seeds.csv", "--headline", "{out}/seeds-headline.json", "--plot", "{out}/seeds.png", "--page",
               "{out}/report.html"]
REPORT = ["report", "--out", "{out}/report.md", "--plots", "{out}/plots"]


def train(stage: str, *extra: str) -> list[str]:
    return ["train", "--params", "{params}", "--stage", stage, "--data", "{data}", "--out", "{out}/ckpt",
            "--live", "{out}/live", "--device", "cpu", *extra]


def evaluate(*extra: str) -> list[str]:
    return ["evaluate", "--params", "{params}", "--stage", "1", "--checkpoint", "{ckpt}", "--data", "{data}",
            "--predictions", "{out}/p.parquet", "--device", "cpu", *extra]


def collect(stage: str, split: str) -> list[str]:
    return ["collect", "--params", "{params}", "--stage", stage, "--split", split, "--checkpoint", "{ckpt}",
            "--data", "{data}", "--out", "{out}/cache", "--device", "cpu"]


def ask(problem: str, *extra: str) -> list[str]:
    return ["ask", problem, "--checkpoint", "{ckpt}", "--oracle", "{out}/oracle", "--device", "cpu", *extra]


TRAIN_ORACLE = ["train-oracle", "--params", "{params}", "--stage", "1", "--kind", "both", "--checkpoint", "{ckpt}",
                "--train", "{tmp}/train", "--val", "{tmp}/val", "--out", "{out}/oracle", "--live", "{out}/live"]
PROBE = ["probe", "--params", "{params}", "--stage", "1", "--train", "{tmp}/none/train", "--val", "{tmp}/none/val",
         "--held-out", "{tmp}/none/test", "--table", "{out}/p.csv", "--steps-table", "{out}/s.csv",
         "--heatmap", "{out}/p.png", "--steps-heatmap", "{out}/s.png", "--metrics", "{out}/p.json"]
DEPTH = "is beyond the model's depth: hidden states are 0..model.tiny.n_layer (2; 0 = embeddings)"
MODEL_REF = "is not 'tiny', an existing local directory, or a Hugging Face model id"
CONFIG_KEYS = "params_file, data_dir, models_dir, results_dir, logs_dir, benchmarks_dir, train_processes"
SECTIONS = "run, data, model, coconut, train, evaluate, interventions, activations, probes, oracle"
OUTSIDE = "outside what the checkpoint was trained on (two operands of 1 or 2 or 3 digits each)"
FEW = ("is too few: the longest sequence, 4-digit operands with every column carrying (5 text steps, 3 thoughts, "
       "markers and the answer), needs 77 positions (allowed: 77 or more)")
NOT_A_SUM = "not a sum of two non-negative integers such as '347 + 285'"

ROWS: list[tuple[str, Make, list[str], str]] = [
    # params values the schema accepts but a later step would trip over
    ("layers_beyond_tiny_depth", params("activations.layers", [0, 3]), GENERATE,
     f"{{params}}: activations.layers: 3 {DEPTH}"),
    ("source_layer_beyond_tiny_depth", params("oracle.source_layer", 3), GENERATE,
     f"{{params}}: oracle.source_layer: 3 {DEPTH}"),
    ("inject_layer_beyond_tiny_depth", params("oracle.inject_layers", [0, 2]), GENERATE,
     "{params}: oracle.inject_layers: 2 is beyond the model's depth: activations are added before blocks 0..1 "
     "(model.tiny.n_layer - 1)"),
    ("source_layer_not_collected", params("activations.layers", [0, 2]), GENERATE,
     "{params}: oracle.source_layer: hidden state 1 is not collected: activations.layers gives [0, 2]"),
    ("oracle_stage_beyond_num_stages", params("oracle.stages", [1, 4]), GENERATE,
     "{params}: oracle.stages: latent stages are 1..coconut.num_stages (3), got 4"),
    ("tiny_model_without_sizes", params("model.tiny", DELETE), GENERATE,
     "{params}: model.tiny: required when model.name is 'tiny'"),
    ("model_name_with_a_space", params("model.name", "my model"), GENERATE,
     f"{{params}}: model.name: 'my model' {MODEL_REF}"),
    ("separate_base_missing_directory", params("oracle.separate.base", "./no/base"), GENERATE,
     "{params}: oracle.separate.base: './no/base' is not 'stage-0', an existing local directory, "
     "or a Hugging Face model id"),
    # params values of the wrong type or out of range
    ("layers_a_word", params("activations.layers", "some"), GENERATE,
     "{params}: activations.layers: 'some' is not allowed: 'all' hidden states (0 = embeddings), or a list of "
     "indices / fractions of depth in (0, 1)"),
    ("source_layer_negative", params("oracle.source_layer", -1), GENERATE,
     "{params}: oracle.source_layer: -1 is not allowed: hidden state the activation is read from (0 = embeddings), "
     "or a fraction of depth in (0, 1)"),
    ("epochs_a_string", params("train.epochs", "3"), GENERATE,
     "{params}: train.epochs: '3' is not allowed: epochs per stage, one number for all or a list with one entry "
     "per stage"),
    ("batch_size_a_string", params("train.batch_size", "8"), GENERATE,
     "{params}: train.batch_size: '8' is not of type 'integer'"),
    ("evaluate_batch_size_0", params("evaluate.batch_size", 0), GENERATE,
     "{params}: evaluate.batch_size: 0 is less than the minimum of 1"),
    ("activations_dtype_int8", params("activations.dtype", "int8"), GENERATE,
     "{params}: activations.dtype: 'int8' is not one of ['float32', 'float16', 'bfloat16']"),
    ("oracle_task_unknown", params("oracle.tasks", ["digit", "why"]), GENERATE,
     "{params}: oracle.tasks.1: 'why' is not one of ['step', 'digit', 'carry', 'a_digit', 'b_digit', 'operands', "
     "'answer', 'problem']"),
    ("oracle_stage_0", params("oracle.stages", [0, 1]), GENERATE,
     "{params}: oracle.stages.0: 0 is less than the minimum of 1"),
    ("text_steps_hidden_answer_not", params("coconut.steps_see_question", False, coconut__answer_sees_question=True),
     GENERATE,
     "{params}: coconut.steps_see_question: false needs coconut.answer_sees_question false (the text steps "
     "cannot be hidden from the question while the answer sees it)"),
    ("self_mix_1", params("oracle.self.mix", 1.0), GENERATE,
     "{params}: oracle.self.mix: 1.0 is greater than or equal to the maximum of 1"),
    ("self_finetune_half", params("oracle.self.finetune", "half"), GENERATE,
     "{params}: oracle.self.finetune: 'half' is not one of ['full', 'lora']"),
    ("lora_rank_0", params("oracle.separate.lora.r", 0), GENERATE,
     "{params}: oracle.separate.lora.r: 0 is less than the minimum of 1"),
    ("probe_C_grid_empty", params("probes.C_grid", []), GENERATE, "{params}: probes.C_grid: [] should be non-empty"),
    ("probe_label_unknown", params("probes.labels", ["carry"]), GENERATE,
     "{params}: probes.labels.0: 'carry' is not one of ['carry_in', 'carry_out', 'digit_written', 'digit_sum', "
     "'a_digit', 'b_digit']"),
    ("precision_fp16", params("model.precision", "fp16"), GENERATE,
     "{params}: model.precision: 'fp16' is not one of ['fp32', 'bf16-mixed']"),
    ("compile_yes", params("train.compile", "yes"), GENERATE,
     "{params}: train.compile: 'yes' is not of type 'boolean'"),
    ("ood_digits_19", params("data.ood_digits", 19), GENERATE,
     "{params}: data.ood_digits: 19 is greater than the maximum of 17 (allowed: 1..17; operand digits of the "
     "out-of-distribution split: more than data.digits', at most 17 (the sum then fits an 18-digit answer))"),
    ("ood_digits_18", params("data.ood_digits", 18), GENERATE,
     "{params}: data.ood_digits: 18 is greater than the maximum of 17 (allowed: 1..17"),
    ("digits_18", params("data.digits", [2, 18], data__digit_probs=[0.5, 0.5]), GENERATE,
     "{params}: data.digits.1: 18 is greater than the maximum of 17 (allowed: 1..17)"),
    ("ood_digits_shorter_than_digits", params("data.ood_digits", 2, data__digits=[3], data__digit_probs=[1.0]),
     GENERATE, "{params}: data.ood_digits: 2 is shorter than data.digits' longest operands (3): the OOD split has "
     "longer operands (allowed: 4..17)"),
    ("n_positions_16", params("model.tiny.n_positions", 16), GENERATE, f"{{params}}: model.tiny.n_positions: 16 {FEW}"),
    ("n_positions_40", params("model.tiny.n_positions", 40), GENERATE, f"{{params}}: model.tiny.n_positions: 40 {FEW}"),
    ("n_positions_for_ood_17", params("data.ood_digits", 17), GENERATE,
     "{params}: model.tiny.n_positions: 96 is too few: the longest sequence, 17-digit operands with every column "
     "carrying (18 text steps, 3 thoughts, markers and the answer), needs 285 positions (allowed: 285 or more)"),
    ("num_stages_beyond_steps", params("coconut.num_stages", 5), GENERATE,
     "{params}: coconut.num_stages: 5 is more stages than reasoning steps: a problem of data.digits has at most 4 "
     "(3 columns and a final carry), and stage k replaces k of them (allowed: 0..4)"),
    ("val_examples_beyond_n_val", params("train.val_examples", 11), GENERATE,
     "{params}: train.val_examples: 11 is more than the val split holds (data.n_val: 10; allowed: 0..10)"),
    ("warmup_beyond_max_steps", params("train.warmup_steps", 4), GENERATE,
     "{params}: train.warmup_steps: 4 is more than stage 0's 3 optimizer steps (train.max_steps), so its learning "
     "rate would never reach train.lr (allowed: 0..3)"),
    ("warmup_beyond_epochs", params("train.warmup_steps", 20, train__max_steps=None), GENERATE,
     "{params}: train.warmup_steps: 20 is more than stage 0's 13 optimizer steps (train.epochs over data.n_train "
     "problems), so its learning rate would never reach train.lr (allowed: 0..13)"),
    ("oracle_warmup_beyond_max_steps", params("oracle.self.train.warmup_steps", 5), GENERATE,
     "{params}: oracle.self.train.warmup_steps: 5 is more than oracle.self.train.max_steps (4), so the learning "
     "rate would never reach oracle.self.train.lr (allowed: 0..4)"),
    ("resume_every_0_minutes", params("resume.every_minutes", 0), GENERATE,
     "{params}: resume.every_minutes: 0 is less than or equal to the minimum of 0"),
    ("unknown_oracle_key", params("oracle.layer", 1), GENERATE,
     "{params}: oracle.layer: unknown key (allowed: stages, tasks, source_layer, inject_layers, "
     "max_new_tokens, batch_size, separate, self)"),
    # config.yaml
    ("config_key_missing", config("models_dir", DELETE), DVC_YAML,
     f"config: models_dir: missing (required: {CONFIG_KEYS})"),
    ("config_key_unknown", config("gpus", 2), DVC_YAML, f"config: gpus: unknown key (allowed: {CONFIG_KEYS})"),
    ("config_0_processes", config("train_processes", 0), DVC_YAML,
     "config: train_processes: must be an integer >= 1, got 0"),
    ("config_processes_a_string", config("train_processes", "2"), DVC_YAML,
     "config: train_processes: must be an integer >= 1, got '2'"),
    ("config_empty_data_dir", config("data_dir", ""), DVC_YAML, "config: data_dir: must be a non-empty path, got ''"),
    ("batch_not_divisible_by_processes", config("train_processes", 3), DVC_YAML,
     "train.batch_size: 8 is not divisible by config train_processes (3)"),
    ("config_a_list", text("config.yaml", "- data\n- models\n"), DVC_YAML,
     f"config: must be a mapping of {CONFIG_KEYS}, got list"),
    ("config_file_missing", text("config.yaml", None), DVC_YAML, "{config}: file not found"),
    # command-line arguments
    ("stage_beyond_num_stages", nothing, train("9"), "--stage 9: must be within 0..coconut.num_stages (3)"),
    ("stage_negative", nothing, train("-1"), "argument --stage: '-1' is not a stage: 0, 1, 2, ..."),
    ("stage_a_word", nothing, train("one"), "argument --stage: 'one' is not a stage: 0, 1, 2, ..."),
    ("stage_1_without_init", nothing, train("1"), "--init: stage 1 starts from the previous stage's checkpoint"),
    ("device_gpu", nothing, train("0", "--device", "gpu"),
     "argument --device: 'gpu' is not a device: auto, cpu, cuda or cuda:N"),
    ("split_eval", checkpoint(), collect("1", "eval"),
     "argument --split: invalid choice: 'eval' (choose from 'train', 'val', 'dev', 'test', 'ood')"),
    ("collect_stage_0", checkpoint(), collect("0", "train"), "--stage 0: activations exist at stages 1..3 only"),
    ("oracle_kind_both", checkpoint(), TRAIN_ORACLE,
     "argument --kind: invalid choice: 'both' (choose from 'separate', 'self')"),
    ("ask_task_sum", checkpoint(), ask("12 + 34", "--task", "sum"),
     "argument --task: invalid choice: 'sum' (choose from 'step', 'digit', 'carry', 'a_digit', 'b_digit', "
     "'operands')"),
    ("evaluate_without_metrics", checkpoint(), evaluate(), "the following arguments are required: --metrics"),
    ("unknown_option", nothing, ["check-params", "--params", "{params}", "--bogus"],
     "unrecognized arguments: --bogus"),
    ("ask_999_plus_1", checkpoint(), ask("999 + 1"), f"'999 + 1': {OUTSIDE}"),
    ("ask_12_plus_345", checkpoint(), ask("12 + 345"), f"'12 + 345': {OUTSIDE}"),
    ("ask_5000_digits", checkpoint(), ask("1" * 5000 + " + 1"),
     f"'{'1' * 37}...': {OUTSIDE}; got 5000 and 1 digits"),
    ("ask_5000_digits_each", checkpoint(), ask("9" * 5000 + " + " + "9" * 5000),
     f"'{'9' * 37}...': {OUTSIDE}; got 5000 and 5000 digits"),
    ("ask_leading_zeros", checkpoint(), ask("0012 + 5"), f"'0012 + 5': {OUTSIDE}; got 2 and 1 digits"),
    ("ask_full_width_4_digits", checkpoint(), ask("\uff11\uff12\uff13\uff14 + 1234"),
     f"'\uff11\uff12\uff13\uff14 + 1234': {OUTSIDE}; got 4 and 4 digits"),
    ("ask_negative_operand", checkpoint(), ask("-3 + 4"), f"'-3 + 4': {NOT_A_SUM}"),
    ("ask_exponent", checkpoint(), ask("1e3 + 2"), f"'1e3 + 2': {NOT_A_SUM}"),
    # files
    ("params_file_missing", text("params.yaml", None), GENERATE, "{params}: file not found"),
    ("params_not_yaml", text("params.yaml", "data: {seed: [0\n"), train("0"), "{params}: not valid YAML ("),
    ("params_file_empty", text("params.yaml", ""), train("0"),
     f"{{params}}: <root>: must be a mapping with the sections {SECTIONS}, got an empty file"),
    ("checkpoint_without_params_json", checkpoint(with_params=False), evaluate("--metrics", "{out}/m.json"),
     "{ckpt}/params.json: missing or unreadable (FileNotFoundError)"),
    ("checkpoint_without_weights", checkpoint(), collect("1", "train"),
     "{ckpt}: not a checkpoint (config.json or model.safetensors missing)"),
    ("data_without_ood_split", data_with("ood", None), train("0"),
     "{data}/ood.parquet: file not found (run `cocoracle generate` first)"),
    ("train_split_not_parquet", data_with("train", "id,a,b\n1,2,3\n"), train("0"),
     "{data}/train.parquet: unreadable parquet (Could not open Parquet input source"),
    ("val_split_other_columns", data_with("val", pa.table({"x": [1, 2]})), train("0"),
     "{data}/val.parquet: no column 'id'; a split written by `cocoracle generate` has id, a, b, n_digits, question, "
     "steps, answer, n_steps"),
    ("probe_cache_missing", nothing, PROBE,
     "{tmp}/none/train: no such cache directory (run its collection)"),
    ("report_eval_without_stage", text("eval.json", '{"accuracy": 1}'), [*REPORT, "--eval", "{tmp}/eval.json"],
     "{tmp}/eval.json: stage: missing"),
    ("report_eval_stage_a_word", text("eval.json", '{"stage": "one"}'), [*REPORT, "--eval", "{tmp}/eval.json"],
     "{tmp}/eval.json: stage: 'one' is not of type 'integer'"),
    ("report_eval_no_split", text("eval.json", '{"stage": 1}'), [*REPORT, "--eval", "{tmp}/eval.json"],
     "{tmp}/eval.json: no split scored (an evaluation holds at least one of val, dev, test, ood)"),
    ("report_eval_accuracy_a_string", text("eval.json", '{"stage": 1, "dev": {"accuracy": "97%", "teacher_forced": '
                                                        '1, "n": 10}}'), [*REPORT, "--eval", "{tmp}/eval.json"],
     "{tmp}/eval.json: dev.accuracy: '97%' is not of type 'number'"),
    ("report_probes_by_thought_a_list", text("p.json", json.dumps(
        {"stage": 1, "by_thought": [], "readable": {}, "readable_at": 0.9,
         "unconverged": {"max_iter": 1, "probes": 1, "stopped": 0}})), [*REPORT, "--probes", "{tmp}/p.json"],
     "{tmp}/p.json: by_thought: [] is not of type 'object'"),
    ("report_oracle_before_a_string", text("o.json", '{"stage": 1, "self_answer_accuracy": {"before": "high", '
                                                     '"after": 0.5}}'), [*REPORT, "--oracle-metrics", "{tmp}/o.json"],
     "{tmp}/o.json: self_answer_accuracy.before: 'high' is not of type 'number'"),
    ("report_oracle_table_stage_a_word",
     text("o.csv", ",".join(ORACLE_COLUMNS) + "\none" + ",0" * (len(ORACLE_COLUMNS) - 1) + "\n"),
     [*REPORT, "--oracle-tables", "{tmp}/o.csv"], "{tmp}/o.csv: column 'stage': 'one' (row 1) is not an integer"),
    ("seed_report_eval_stage_a_word", text("run/eval/stage-0.json", '{"stage": "zero"}'), SEED_REPORT,
     "{tmp}/run/eval/stage-0.json: stage: 'zero' is not of type 'integer'"),
    ("seed_report_headline_a_word", seed_run_with_headline('{"eval": {"stage-0": {"dev": "high"}}}'), SEED_REPORT,
     "{tmp}/run/eval/stage-0-headline.json: eval.stage-0.dev: 'high' is not of type 'number'"),
    ("val_split_a_of_strings", data_column("val", "a", pa.array(["x"] * 10)), train("0"),
     "{data}/val.parquet: column 'a': string values, where `cocoracle generate` writes int64"),
    ("provenance_missing_path", nothing, ["provenance", "{tmp}/nowhere.json"], "{tmp}/nowhere.json: not found"),
    ("provenance_of_a_report", text("report.md", "# results\n"), ["provenance", "{tmp}/report.md"],
     "{tmp}/report.md: a report page, made by `cocoracle report` or `seed-report`; it has no provenance record"),
    ("provenance_of_a_plot", text("plots/accuracy.png", "png"), ["provenance", "{tmp}/plots/accuracy.png"],
     "{tmp}/plots/accuracy.png: a plot or table"),
    ("provenance_of_a_data_split", data_with("ood", None), ["provenance", "{tmp}/data/dev.parquet"],
     "{tmp}/data/dev.parquet: a data split written by `cocoracle generate`"),
    ("provenance_record_inputs_a_list", text("m.json", '{"stage": 1, "provenance": {"params_sha256": "0", '
                                                       '"inputs": []}}'), ["provenance", "{tmp}/m.json"],
     "{tmp}/m.json (provenance): inputs: [] is not of type 'object'"),
    ("report_eval_missing", nothing, [*REPORT, "--eval", "{tmp}/stage-0.json"], "{tmp}/stage-0.json: file not found"),
]


@pytest.fixture
def restore_logging():
    """main() configures the root logger for its command; put it back for the tests after this one."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """`cocoracle argv` in this process: (exit status, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, make, command, expected", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_stops_before_work_in_one_line(tmp_path, monkeypatch, capsys, restore_logging, data_dir,
                                                 case, make, command, expected):
    monkeypatch.chdir(tmp_path)  # no default path (params.yaml, data, models) reaches the repository
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    make(tmp_path, data_dir)
    fill = {"tmp": tmp_path, "params": tmp_path / "params.yaml", "config": tmp_path / "config.yaml",
            "data": tmp_path / "data", "ckpt": tmp_path / "ckpt", "out": tmp_path / "out"}
    code, err = run_main([arg.format(**fill) for arg in command], capsys)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert re.match(rf"cocoracle( {command[0]})?: error: ", lines[0]), lines[0]  # the top level for unknown options
    assert expected.format(**fill) in lines[0]
    assert not fill["out"].exists()
