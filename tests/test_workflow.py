"""End to end: the smoke DAG through the real engines, and the incremental case in each."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from helpers_workflow import repo_copy, run, set_param

pytestmark = pytest.mark.e2e
STAGES = (0, 1, 2)  # smoke params: coconut.num_stages = 2


def _mtimes(repo, paths):
    return {p: (repo / p).stat().st_mtime_ns for p in paths}


def _check_outputs(repo):
    for split in ("train", "val", "test", "ood"):
        assert (repo / "data" / f"{split}.parquet").is_file()
    for k in STAGES:
        ckpt = repo / "models" / f"stage-{k}"
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
        assert not list(ckpt.glob("*.bin")) and not list(ckpt.glob("*.pt"))
        metrics = json.loads((repo / "results" / "eval" / f"stage-{k}.json").read_text())
        assert {"val", "test", "ood"} <= set(metrics)
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["n"] == 40
        assert (repo / "results" / "train" / f"stage-{k}" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    for k in STAGES[1:]:
        for split in ("train", "val", "test"):
            assert (repo / "results" / "activations" / f"stage-{k}" / split / "manifest.json").is_file()
        probes = (repo / "results" / "probes" / f"stage-{k}.csv").read_text().splitlines()
        assert probes[0] == "stage,tensor,thought,label,accuracy,baseline,val_accuracy,n,C" and len(probes) > 1
        assert (repo / "results" / "probes" / f"stage-{k}.png").stat().st_size > 0
    for k in STAGES[1:]:
        for kind in ("separate", "self"):
            oracle = repo / "models" / "oracle" / kind / f"stage-{k}"
            assert (oracle / "oracle.json").is_file() and list(oracle.glob("*.safetensors"))
        table = (repo / "results" / "oracle" / f"stage-{k}.csv").read_text().splitlines()
        assert table[0] == "stage,oracle,condition,task,thought,n,exact_match,token_f1,number_f1"
        conditions = {line.split(",")[2] for line in table[1:]}
        assert conditions == {"oracle", "shuffled", "random", "no_injection", "majority", "majority_per_position"}
        summary = json.loads((repo / "results" / "oracle" / f"stage-{k}.json").read_text())
        assert set(summary["self"]) == set(summary["separate"]) == {"step", "digit", "carry", "answer", "problem"}
    report = (repo / "results" / "report.md").read_text()
    assert all(f"\n| {k} |" in report for k in STAGES)  # accuracy table rows
    assert "| 2 | self | step |" in report and "| 1 | separate | carry |" in report  # oracle table rows
    for name in ("accuracy", "oracle", "training"):
        assert f"(report/{name}.png)" in report
        assert (repo / "results" / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


UPSTREAM = ["data/train.parquet"] + [f"models/stage-{k}/model.safetensors" for k in STAGES]
EVAL = [f"results/eval/stage-{k}.json" for k in STAGES]
CACHES = [f"results/activations/stage-{k}/{s}/manifest.json" for k in STAGES[1:] for s in ("train", "val", "test")]
PROBES = [f"results/probes/stage-{k}.json" for k in STAGES[1:]]
SEPARATE = [f"models/oracle/separate/stage-{k}/oracle.json" for k in STAGES[1:]]
SELF = [f"models/oracle/self/stage-{k}/oracle.json" for k in STAGES[1:]]
ORACLE_EVAL = [f"results/oracle/stage-{k}.json" for k in STAGES[1:]]


@pytest.fixture(scope="module")
def snakemake_repo(tmp_path_factory):
    repo = repo_copy(tmp_path_factory.mktemp("smk"))
    run(["snakemake", "--cores", "2"], cwd=repo)
    return repo


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    repo = repo_copy(tmp_path_factory.mktemp("dvc"))
    run(["dvc", "repro"], cwd=repo)
    return repo


def test_snakemake_runs_the_whole_dag(snakemake_repo):
    _check_outputs(snakemake_repo)
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_repo).stdout
    assert "Nothing to be done" in dry


def test_dvc_runs_the_whole_dag(dvc_repo):
    _check_outputs(dvc_repo)
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout or "{}")
    assert status == {}


def test_both_engines_compute_the_same_results(snakemake_repo, dvc_repo):
    for path in ["data/train.parquet", "data/ood.parquet", *EVAL, "results/probes/stage-2.csv",
                 "results/oracle/stage-1.csv", "results/oracle/stage-2.csv", "results/report.md"]:
        assert (snakemake_repo / path).read_bytes() == (dvc_repo / path).read_bytes(), path


def _planned_jobs(dry_run: str) -> set[str]:
    """Rule names in the job-stats table of a snakemake dry run."""
    return set(re.findall(r"^(\w+)\s+\d+$", dry_run, re.M)) - {"total"}


def test_snakemake_reruns_only_evaluation_after_an_evaluate_param_change(snakemake_repo):
    set_param(snakemake_repo, "evaluate", "max_new_tokens", 39)
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_repo).stdout
    assert _planned_jobs(dry) == {"evaluate_stage", "report", "all"}, dry
    before = _mtimes(snakemake_repo, UPSTREAM + CACHES + PROBES + EVAL)
    run(["snakemake", "--cores", "2"], cwd=snakemake_repo)
    after = _mtimes(snakemake_repo, UPSTREAM + CACHES + PROBES + EVAL)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES), "another step reran"
    assert all(before[p] < after[p] for p in EVAL), "evaluation did not rerun"


def test_snakemake_reruns_only_probes_after_a_probe_param_change(snakemake_repo):
    set_param(snakemake_repo, "probes", "C_grid", [0.5])
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_repo).stdout
    assert _planned_jobs(dry) == {"probe_stage", "report", "all"}, dry
    before = _mtimes(snakemake_repo, UPSTREAM + CACHES + PROBES)
    run(["snakemake", "--cores", "2"], cwd=snakemake_repo)
    after = _mtimes(snakemake_repo, UPSTREAM + CACHES + PROBES)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES), "an upstream step reran"
    assert all(before[p] < after[p] for p in PROBES), "probes did not rerun"


def test_dvc_reruns_only_evaluation_after_an_evaluate_param_change(dvc_repo):
    set_param(dvc_repo, "evaluate", "max_new_tokens", 39)
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout)
    assert set(status) == {f"evaluate_stage_{k}" for k in STAGES}
    before = _mtimes(dvc_repo, UPSTREAM + CACHES + PROBES + EVAL)
    out = run(["dvc", "repro"], cwd=dvc_repo).stdout
    after = _mtimes(dvc_repo, UPSTREAM + CACHES + PROBES + EVAL)
    assert "Running stage 'train_stage" not in out and "Running stage 'generate'" not in out
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES), "another step reran"
    assert all(before[p] < after[p] for p in EVAL), "evaluation did not rerun"


def test_dvc_reruns_only_probes_after_a_probe_param_change(dvc_repo):
    set_param(dvc_repo, "probes", "C_grid", [0.5])
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout)
    assert set(status) == {f"probe_stage_{k}" for k in STAGES[1:]}
    before = _mtimes(dvc_repo, UPSTREAM + CACHES + PROBES)
    run(["dvc", "repro"], cwd=dvc_repo)
    after = _mtimes(dvc_repo, UPSTREAM + CACHES + PROBES)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES), "an upstream step reran"
    assert all(before[p] < after[p] for p in PROBES), "probes did not rerun"


def test_snakemake_reruns_only_the_self_oracle_after_its_param_change(snakemake_repo):
    params = yaml.safe_load((snakemake_repo / "params.yaml").read_text())
    params["oracle"]["self"]["mix"] = 0.5
    (snakemake_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_repo).stdout
    assert _planned_jobs(dry) == {"train_oracle", "evaluate_oracles", "report", "all"}, dry
    assert dry.count("rule train_oracle:") == 2 and "output: models/oracle/separate" not in dry, dry
    before = _mtimes(snakemake_repo, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    run(["snakemake", "--cores", "2"], cwd=snakemake_repo)
    after = _mtimes(snakemake_repo, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES + SEPARATE), "another step reran"
    assert all(before[p] < after[p] for p in SELF + ORACLE_EVAL), "the self-oracle did not rerun"


def test_dvc_reruns_only_the_self_oracle_after_its_param_change(dvc_repo):
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["oracle"]["self"]["mix"] = 0.5
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout)
    assert set(status) == {f"train_self_oracle_stage_{k}" for k in STAGES[1:]}
    before = _mtimes(dvc_repo, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    run(["dvc", "repro"], cwd=dvc_repo)
    after = _mtimes(dvc_repo, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES + SEPARATE), "another step reran"
    assert all(before[p] < after[p] for p in SELF + ORACLE_EVAL), "the self-oracle did not rerun"
