"""Provenance records: what they hold, that they do not depend on time or place, and `cocoracle provenance`."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from cocoracle.provenance import describe, format_record, input_hash, read
from conftest import run_cli


def test_a_record_names_the_revision_versions_params_and_each_input(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    record = describe({"train": {"lr": 0.1}}, [tmp_path / "dir", tmp_path / "b.txt"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["git_revision"] == head and isinstance(record["git_dirty"], bool)
    assert record["versions"]["torch"] and record["versions"]["transformers"]
    assert record["torch_threads"] == torch.get_num_threads()
    assert set(record["inputs"]) == {str(tmp_path / "dir"), str(tmp_path / "b.txt")}
    assert describe({"train": {"lr": 0.1}}, [tmp_path / "b.txt"])["params_sha256"] == record["params_sha256"]
    assert describe({"train": {"lr": 0.2}}, [])["params_sha256"] != record["params_sha256"]


def test_a_record_names_the_thread_count_it_was_computed_with():
    """One seed gives other bits on another number of threads, so a record says how many there were."""
    before = torch.get_num_threads()
    try:
        counts = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            counts.append(describe({}, [])["torch_threads"])
    finally:
        torch.set_num_threads(before)
    assert counts == [1, 2]
    assert "torch threads: 2" in format_record({"torch_threads": 2})


def test_input_hash_of_a_directory_follows_names_and_contents_not_place(tmp_path):
    for name in ("one", "two"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub/x.bin").write_bytes(b"x")
    assert input_hash(tmp_path / "one") == input_hash(tmp_path / "two")
    (tmp_path / "two/.snakemake_timestamp").write_text("")  # an engine's marker is not content
    assert input_hash(tmp_path / "one") == input_hash(tmp_path / "two")
    (tmp_path / "two/sub/x.bin").write_bytes(b"y")
    assert input_hash(tmp_path / "one") != input_hash(tmp_path / "two")


def test_the_command_prints_a_checkpoint_a_cache_and_a_metrics_file(tmp_path):
    record = describe({"evaluate": {"batch_size": 1}}, [])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/provenance.json").write_text(json.dumps(record))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/manifest.json").write_text(json.dumps({"rows": 1, "provenance": record}))
    (tmp_path / "metrics.json").write_text(json.dumps({"stage": 0, "provenance": record}))
    for path in ("ckpt", "cache", "metrics.json"):
        assert read(tmp_path / path) == record
        result = run_cli("provenance", tmp_path / path)
        assert result.returncode == 0 and result.stdout.strip() == format_record(record)
        assert f"git revision: {record['git_revision']}" in result.stdout


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_no_record_is_one_line(tmp_path, content):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    result = run_cli("provenance", path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(path) in result.stderr


def test_a_missing_path_is_not_found(tmp_path):
    result = run_cli("provenance", tmp_path / "nowhere.json")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cocoracle provenance: error: {tmp_path / 'nowhere.json'}: not found"


@pytest.mark.parametrize("name, content, expected", [
    ("data/train.parquet", b"PAR1", "a data split written by `cocoracle generate`"),
    ("results/report.md", b"# cocoracle results\n", "a report page, made by `cocoracle report` or `seed-report`"),
    ("results/plots/accuracy.png", b"\x89PNG\r\n\x1a\n", "a plot or table"),
    ("results/seed-0/oracle/stage-1.csv", b"stage\n1\n", "a plot or table"),
    ("results/seed-0/eval/stage-1-predictions.parquet", b"PAR1", "predictions whose results file (stage-1.json)"),
    ("results/notes.txt", b"hello", "no provenance record: not a checkpoint, oracle, cache or results file"),
    ("models/empty", None, "no provenance record: not a checkpoint, oracle or cache directory"),
])
def test_a_path_without_a_record_says_what_it_is(tmp_path, name, content, expected):
    """Data, reports, plots and tables have no record of their own: one line saying what the path is (before,
    `not JSON` for every one of them)."""
    from cocoracle.config import InputError

    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read(path)
    assert str(caught.value).startswith(f"{path}: {expected}"), caught.value
    assert "\n" not in str(caught.value)


def test_a_predictions_file_has_its_results_files_record(tmp_path):
    record = describe({"evaluate": {"batch_size": 1}}, [])
    (tmp_path / "stage-1.json").write_text(json.dumps({"stage": 1, "provenance": record}))
    (tmp_path / "stage-1-predictions.parquet").write_bytes(b"PAR1")
    assert read(tmp_path / "stage-1-predictions.parquet") == record


@pytest.mark.parametrize("record, expected", [
    ({"params_sha256": "0", "inputs": ["a"]}, "inputs: ['a'] is not of type 'object'"),
    ({"params_sha256": "0", "inputs": {}, "git_dirty": "no"}, "git_dirty: 'no' is not of type 'boolean', 'null'"),
    ({"params_sha256": "0", "inputs": {}, "cpu": {"isa": "avx"}}, "cpu.isa: 'avx' is not of type 'array'"),
    ({"inputs": {}, "seed": "0"}, "seed: '0' is not of type 'integer', 'null'"),
])
def test_a_record_of_the_wrong_shape_names_the_field(tmp_path, record, expected):
    from cocoracle.config import InputError

    path = tmp_path / "stage-1.json"
    path.write_text(json.dumps({"stage": 1, "provenance": record}))
    with pytest.raises(InputError) as caught:
        read(path)
    assert str(caught.value) == f"{path} (provenance): {expected}"


def test_a_results_file_that_is_a_list_has_no_record(tmp_path):
    from cocoracle.config import InputError

    path = tmp_path / "metrics.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="no provenance record"):
        read(path)
