"""Oracle training and evaluation: items, baselines on the same items, learning a linearly encoded label,
the best-on-val weights, LoRA adapters and their trainable token rows round trip, the written tables, and
`cocoracle ask`."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from cocoracle import headline
from cocoracle.cli import main
from cocoracle.config import InputError
from cocoracle.model import save_checkpoint
from cocoracle.oracle import evaluate as oracle_evaluate
from cocoracle.oracle import train as oracle_train
from cocoracle.oracle.data import OracleCodec, build_items
from cocoracle.oracle.evaluate import (
    COLUMNS,
    CONDITIONS,
    answer_conditions,
    condition_inputs,
    evaluate_oracles,
    majority_answers,
    score_oracle,
    shuffled_rows,
)
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.metrics import METRICS
from cocoracle.oracle.questions import prompt
from cocoracle.oracle.train import build_oracle, load_oracle, oracle_loss, read_spec, save_oracle, train_oracle
from cocoracle.report import ORACLE_COLUMNS
from conftest import make_tiny_model, run_cli
from synthetic import synthetic_cache

CPU = torch.device("cpu")
D = 32  # the tiny model's width (conftest.TINY)


@pytest.fixture
def checkpoint(tmp_path, mixed_rows, tiny_params):
    """A randomly initialised tiny stage-1 checkpoint (float32) to build oracles on."""
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    path = tmp_path / "stage-1"
    save_checkpoint(model, tokenizer, path, {**tiny_params, "stage": 1})
    return path


def _caches(tmp_path, encoded: bool) -> dict:
    return {split: synthetic_cache(tmp_path / f"{split}-{encoded}", n, encoded, seed, d=D, layer="layer_1", noise=0.3)
            for split, n, seed in [("train", 400, 0), ("val", 50, 1), ("test", 100, 2)]}


def _oracle_params(params: dict, steps: int) -> dict:
    params["oracle"].update({"tasks": ["digit"], "source_layer": 1, "inject_layers": None})
    params["oracle"]["self"].update({"finetune": "full", "mix": 0.0, "alpha": 2.0})
    params["oracle"]["self"]["train"].update({"batch_size": 32, "lr": 0.003, "max_steps": steps, "warmup_steps": 5})
    return params


def _exact_match_by_condition(tmp_path, checkpoint, tiny_params, data_dir, encoded: bool) -> pd.Series:
    caches = _caches(tmp_path, encoded)
    params = _oracle_params(tiny_params, steps=250)
    out = tmp_path / f"oracle-{encoded}"
    train_oracle("self", params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, None, data_dir,
                 out, tmp_path / f"live-{encoded}", CPU)
    scored = score_oracle("self", out, caches, params, 1, CPU)
    return scored.groupby("condition")["exact_match"].mean()


def test_oracle_reads_a_linearly_encoded_label(tmp_path, checkpoint, tiny_params, data_dir):
    em = _exact_match_by_condition(tmp_path, checkpoint, tiny_params, data_dir, encoded=True)
    assert em["oracle"] > 0.8, em
    assert em["oracle"] > em["shuffled"] + 0.5, em


def test_oracle_trained_on_noise_does_not_beat_shuffled(tmp_path, checkpoint, tiny_params, data_dir):
    em = _exact_match_by_condition(tmp_path, checkpoint, tiny_params, data_dir, encoded=False)
    assert em["oracle"] < em["shuffled"] + 0.1, em


def _two_task_oracle(tmp_path, checkpoint, tiny_params, data_dir) -> tuple[dict, dict, Path]:
    """Caches, params (tasks digit and carry) and a self-oracle trained for two steps on them."""
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=2)
    params["oracle"]["tasks"] = ["digit", "carry"]
    out = tmp_path / "oracle"
    train_oracle("self", params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, None, data_dir,
                 out, tmp_path / "live", CPU)
    return caches, params, out


def test_baselines_are_scored_on_exactly_the_oracle_items(tmp_path, checkpoint, tiny_params, data_dir):
    caches, params, out = _two_task_oracle(tmp_path, checkpoint, tiny_params, data_dir)
    scored = score_oracle("self", out, caches, params, 1, CPU)
    keys = ["row", "task", "thought", "prompt", "target"]
    items = {c: g[keys].reset_index(drop=True) for c, g in scored.groupby("condition")}
    assert set(items) == {"oracle", "shuffled", "random", "no_injection", "majority", "majority_per_position"}
    for condition, frame in items.items():
        pd.testing.assert_frame_equal(frame, items["oracle"], obj=condition)


def test_each_distinct_question_about_a_vector_is_decoded_once(tmp_path, checkpoint, tiny_params, data_dir,
                                                                monkeypatch):
    """Every condition's answers are those of decoding every item, while no_injection decodes each distinct
    prompt once and shuffled only what the oracle condition did not already ask."""
    caches, params, out = _two_task_oracle(tmp_path, checkpoint, tiny_params, data_dir)
    decoded = []
    real = oracle_evaluate.answer_prompts
    monkeypatch.setattr(oracle_evaluate, "answer_prompts",
                        lambda *args, **kwargs: decoded.append(len(args[3])) or real(*args, **kwargs))
    _, shared = answer_conditions("self", out, caches, params, 1, CPU)

    _, items, inputs = condition_inputs(caches, params["oracle"], 1, 1, 0)
    model, tokenizer, spec = load_oracle(out, CPU)
    injector, codec = Injector(model, spec.inject_layers, spec.alpha), OracleCodec(tokenizer)
    for condition, (_, vectors) in inputs.items():
        expected = real(model, injector, codec, items["prompt"].tolist(), vectors,
                        params["oracle"]["max_new_tokens"], params["oracle"]["batch_size"])
        assert shared[condition] == expected, condition
    prompts, n = items["prompt"].tolist(), len(items)
    not_asked = (set(zip(prompts, inputs["shuffled"][0], strict=True))
                 - set(zip(prompts, inputs["oracle"][0], strict=True)))
    assert decoded == [n, len(not_asked), n, len(set(prompts))], decoded
    assert len(not_asked) < n and len(set(prompts)) == 4


def test_shuffled_activation_comes_from_another_problem_at_the_same_position(tmp_path):
    cache = synthetic_cache(tmp_path / "c", 30, True, 0)
    items = build_items(cache, ["digit", "carry"], 0, np.random.default_rng(0))
    source = shuffled_rows(items, np.random.default_rng(1))
    picked = items.iloc[source].reset_index(drop=True)
    assert (picked["problem_id"] != items["problem_id"]).all()
    assert (picked["thought"] == items["thought"]).all() and (picked["task"] == items["task"]).all()


def test_majority_baselines_hand_made():
    train = pd.DataFrame({"task": ["digit"] * 5, "thought": [0, 0, 0, 1, 1], "target": ["3", "3", "5", "5", "5"]})
    test = pd.DataFrame({"task": ["digit", "digit"], "thought": [0, 1]})
    answers = majority_answers(train, test)
    assert answers["majority"] == ["5", "5"]
    assert answers["majority_per_position"] == ["3", "5"]


def _scripted_validation(monkeypatch, exact_matches: list[float]) -> list[dict[str, torch.Tensor]]:
    """Replace the validation scorer: it returns `exact_matches` in turn and records the trainable weights it saw."""
    seen, scores = [], iter(exact_matches)

    def fake(model, *args):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return next(scores)
    monkeypatch.setattr(oracle_train, "validation_exact_match", fake)
    return seen


@pytest.mark.parametrize("kind", ["self", "separate"])
def test_training_saves_the_best_validation_weights_not_the_last(tmp_path, checkpoint, tiny_params, data_dir,
                                                                   monkeypatch, kind):
    seen = _scripted_validation(monkeypatch, [0.2, 0.6, 0.6, 0.4])  # best at step 4; step 6 only ties it
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=8)
    params["oracle"]["separate"]["train"].update({"max_steps": 8, "lr": 0.003})
    out = tmp_path / kind
    train_oracle(kind, params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, checkpoint, data_dir,
                 out, tmp_path / "live", CPU)
    assert len(seen) == 4  # validated at each quarter: steps 2, 4, 6, 8
    model, _, _ = load_oracle(out, CPU)
    saved = {n: p for n, p in model.named_parameters() if n in seen[1]}
    assert saved.keys() == seen[1].keys()
    assert all(torch.equal(saved[n], seen[1][n]) for n in saved)
    assert not all(torch.equal(saved[n], seen[3][n]) for n in saved)  # training went on after step 4
    record = json.loads((out / "validation.json").read_text())
    assert record == {"selected_step": 4, "selected_val_exact_match": 0.6, "steps": 8,
                      "curve": {"2": 0.2, "4": 0.6, "6": 0.6, "8": 0.4}}


def test_separate_oracle_saves_a_lora_adapter_and_reloads_it(tmp_path, checkpoint, tiny_params, data_dir,
                                                             monkeypatch):
    _scripted_validation(monkeypatch, [0.1, 0.2, 0.3, 0.4])  # improving: the last (trained) weights are kept
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=3)
    out = tmp_path / "separate"
    train_oracle("separate", params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, checkpoint,
                 data_dir, out, tmp_path / "live", CPU)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "oracle.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(params["oracle"]["separate"]["lora"]["target_modules"])  # not peft's set order
    model, _, spec = load_oracle(out, CPU)
    assert spec.kind == "separate" and spec.finetune == "lora" and spec.inject_layers == [0]
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora and any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_separate_oracle_trains_exactly_its_new_token_rows_and_reloads_them(tmp_path, checkpoint, tiny_params):
    params = _oracle_params(tiny_params, steps=3)
    model, tokenizer, spec = build_oracle("separate", params, 1, checkpoint, checkpoint, D, CPU)
    vocabulary = torch.arange(len(tokenizer))
    new = vocabulary >= len(AutoTokenizer.from_pretrained(checkpoint))  # the placeholder and question words

    def rows(m):
        return m.get_input_embeddings()(vocabulary).detach().clone()
    before = rows(model)
    codec, injector = OracleCodec(tokenizer), Injector(model, spec.inject_layers, spec.alpha)
    batch = codec.batch([prompt(1, "What digit does this step write ?"), prompt(1, "What is the final answer ?")],
                        ["7", "1 2"])
    vectors = torch.randn(2, D)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for _ in range(3):
        oracle_loss(model, injector, batch, vectors).backward()
        optimizer.step()
        optimizer.zero_grad()
    injector.remove()
    changed = (rows(model) != before).any(-1)
    assert new.any() and changed[new].all() and not changed[~new].any()
    save_oracle(model, tokenizer, spec, checkpoint, tmp_path / "oracle", {})
    loaded, _, _ = load_oracle(tmp_path / "oracle", CPU)
    model.eval()
    assert torch.equal(rows(loaded), rows(model))
    logits = [m(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids).logits for m in (model, loaded)]
    assert torch.allclose(logits[0], logits[1], atol=1e-6)


def test_evaluate_oracles_writes_every_metric_with_intervals(tmp_path, checkpoint, tiny_params, data_dir):
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=2)
    params["oracle"]["tasks"] = ["digit", "operands"]
    dirs = {kind: tmp_path / kind for kind in ("separate", "self")}
    for kind, out in dirs.items():
        train_oracle(kind, params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, checkpoint,
                     data_dir, out, tmp_path / f"live-{kind}", CPU)
    paths = {name: tmp_path / f"stage-1{suffix}" for name, suffix in
             [("table", ".csv"), ("metrics", ".json"), ("predictions", "-predictions.parquet")]}
    evaluate_oracles(params, 1, checkpoint, dirs, {s: caches[s].path for s in ("train", "test")}, data_dir,
                     paths["table"], paths["metrics"], paths["predictions"], CPU)
    table = pd.read_csv(paths["table"], dtype={"thought": str})
    assert list(table.columns) == COLUMNS and set(ORACLE_COLUMNS) <= set(table.columns)  # the report still reads it
    cells = table.groupby(["oracle", "task", "thought"])["condition"].agg(sorted)
    assert len(cells) == 2 * 2 * 3 and all(c == sorted(CONDITIONS) for c in cells)  # thoughts 0, 1 and all
    bounds = [f"{m}_{end}" for m in METRICS for end in ("low", "high")]
    assert table[[*METRICS, *bounds]].notna().all().all()
    assert table.loc[table["condition"] == "oracle", "exact_match_diff_low"].notna().all()
    assert table.loc[table["condition"] != "oracle", "exact_match_diff"].isna().all()
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["stage"] == 1 and set(metrics["self_answer_accuracy"]) == {"before", "after"}
    assert json.loads(headline.path_for(paths["metrics"]).read_text()) == headline.oracles(metrics)  # DVC's metrics
    for kind in dirs:
        assert metrics[kind]["selected_step"] in (1, 2)
        assert metrics[kind]["source_tensor"] == f"layer_{read_spec(dirs[kind]).source_layer}"  # as probes name it
        assert {"exact_match_any_order_low", "token_f1_diff_high", "best_baseline"} <= set(metrics[kind]["operands"])
    assert set(METRICS) <= set(pd.read_parquet(paths["predictions"]).columns)


def test_ask_rejects_bad_problems_in_one_line(checkpoint, tmp_path, capsys):
    """The first problem through the console script (one process, one stderr line), the others through its `main`
    in this process (a subprocess each would import torch again)."""
    outside = "outside what the checkpoint was trained on (two operands of 1 or 2 or 3 digits each)"
    cases = [("hello", "not a sum"), ("12345 + 1", outside), ("999 + 1", outside), ("1234 + 5678", outside)]
    result = run_cli("ask", cases[0][0], "--checkpoint", checkpoint, "--oracle", tmp_path / "none")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and cases[0][1] in result.stderr, result.stderr
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        for problem, message in cases[1:]:
            capsys.readouterr()
            code = main(["ask", problem, "--checkpoint", str(checkpoint), "--oracle", str(tmp_path / "none")])
            stderr = capsys.readouterr().err
            assert code == 2, stderr
            assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_ask_reads_every_thought(tmp_path, checkpoint, tiny_params, data_dir):
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=2)
    train_oracle("self", params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, None, data_dir,
                 tmp_path / "oracle", tmp_path / "live", CPU)
    result = run_cli("ask", "47 + 85", "--checkpoint", checkpoint, "--oracle", tmp_path / "oracle", "--task", "digit")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(r"47 \+ 85: (model answers \d+|the model wrote no answer) .*after 1 latent thought \(stage 1\)$",
                    lines[0]), lines[0]  # the random model: no answer
    rows = [line.split() for line in lines[3:]]
    assert [r[0] for r in rows] == ["0"]  # stage 1 of 3: one thought, standing for step 0
    assert rows[0][-2] == "2"  # true digit written at step 0 of 47 + 85 (7 + 5 = 12)


def test_separate_oracle_on_a_local_pretrained_base(tmp_path, checkpoint, tiny_params, data_dir, local_model_dir):
    base = local_model_dir[0]
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=2)
    out = tmp_path / "separate"
    train_oracle("separate", params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, base,
                 data_dir, out, tmp_path / "live", CPU)
    model, tokenizer, spec = load_oracle(out, CPU)
    assert (out / spec.base).resolve() == Path(base).resolve()
    assert "<act>" in tokenizer.get_vocab()  # the placeholder was added to the pretrained tokenizer


def test_an_oracle_on_a_relative_base_loads_from_another_directory(tmp_path, monkeypatch, checkpoint, tiny_params,
                                                                   data_dir, local_model_dir):
    """A run names its base relative to its root ('models/seed-0/stage-0'); the oracle must not depend on the caller's
    working directory (from elsewhere, the name would be taken for a hub id and fetched)."""
    run = tmp_path / "run"
    shutil.copytree(local_model_dir[0], run / "models" / "base")
    caches = _caches(tmp_path, encoded=True)
    monkeypatch.chdir(run)
    train_oracle("separate", _oracle_params(tiny_params, steps=2), 1, {s: caches[s].path for s in ("train", "val")},
                 checkpoint, "models/base", data_dir, "models/oracle", tmp_path / "live", CPU)
    monkeypatch.chdir(tmp_path)
    _, _, spec = load_oracle(run / "models" / "oracle", CPU)
    assert spec.base == "../base"


def test_a_fraction_of_depth_is_the_checkpoints_not_a_deeper_bases(tmp_path, checkpoint, tiny_params, data_dir,
                                                                     mixed_rows):
    """source_layer 0.5 names hidden state 1 of the 2-layer Coconut checkpoint whose activations the cache holds,
    also for a separate oracle on a 4-layer base (its own half would be hidden state 2, not in the cache)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = make_tiny_model(mixed_rows)
    base = tmp_path / "deep-base"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=D, n_layer=4, n_head=2)
                    ).save_pretrained(base)
    tokenizer.save_pretrained(base)
    caches = _caches(tmp_path, encoded=True)
    params = _oracle_params(tiny_params, steps=2)
    params["oracle"]["source_layer"] = 0.5
    train_oracle("separate", params, 1, {s: caches[s].path for s in ("train", "val")}, checkpoint, base,
                 data_dir, tmp_path / "separate", tmp_path / "live", CPU)
    spec = read_spec(tmp_path / "separate")
    assert (spec.source_layer, spec.inject_layers) == (1, [0])


def test_separate_oracle_base_of_another_width_is_one_line_error(tmp_path, checkpoint, tiny_params, data_dir):
    caches = {s: synthetic_cache(tmp_path / s, 10, True, 0, d=16, layer="layer_1") for s in ("train", "val")}
    with pytest.raises(InputError, match=r"oracle\.separate: .* width 32, activations have 16"):
        train_oracle("separate", _oracle_params(tiny_params, 2), 1, {s: c.path for s, c in caches.items()},
                     checkpoint, checkpoint, data_dir, tmp_path / "out", tmp_path / "live", CPU)
    assert not (tmp_path / "out").exists()


def test_oracle_tokens_spell_every_question_and_are_reproducible(mixed_rows):
    from cocoracle.oracle.questions import TEMPLATES, prompt
    from cocoracle.oracle.train import add_oracle_tokens

    grown = []
    for _ in range(2):
        model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
        before = len(tokenizer)
        add_oracle_tokens(model, tokenizer)
        assert len(tokenizer) > before and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
        grown.append((model.get_input_embeddings().weight.detach().clone(), tokenizer.get_vocab()))
    assert torch.equal(grown[0][0], grown[1][0]) and grown[0][1] == grown[1][1]
    for question in (q for templates in TEMPLATES.values() for q in templates):
        ids = tokenizer(prompt(2, question), add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, question
        assert ids.count(tokenizer.convert_tokens_to_ids("<act>")) == 1
    assert tokenizer.decode(tokenizer("7+5=12 write 2", add_special_tokens=False)["input_ids"]) == "7 + 5 = 1 2 write 2"


@pytest.mark.parametrize("problem, expected, normalised", [
    ("347 + 285", (347, 285), False),
    ("\u0663\u0664\u0667 + \u0662\u0668\u0665", (347, 285), True),  # Arabic-Indic
    ("\uff13\uff14\uff17 + \uff12\uff18\uff15 =", (347, 285), True),  # full-width
    ("012 + 34", (12, 34), False),
])
def test_ask_reads_any_decimal_digits_and_says_so(problem, expected, normalised):
    from cocoracle.oracle.ask import normalised_digits, parse_problem

    assert parse_problem(problem, [2, 3]) == expected
    assert normalised_digits(problem) is normalised
