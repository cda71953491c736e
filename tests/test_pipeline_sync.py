"""The Snakemake and DVC DAGs must not drift: same commands, same inputs, same outputs."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from cocoracle.config import load_params, read_yaml
from cocoracle.dvc_yaml import render_dvc_yaml
from helpers_workflow import REPO, repo_copy, run


def snakemake_jobs(repo) -> dict[str, tuple[set[str], set[str]]]:
    """Shell command -> (inputs, outputs) of every job in a forced dry run."""
    out = run(["snakemake", "--forceall", "--dry-run", "--printshellcmds", "--cores", "1"], cwd=repo).stdout
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        if command and command.group(1).strip() != "None":
            jobs[command.group(1).strip()] = (set(fields.get("input", "").split(", ")) - {""},
                                              set(fields["output"].split(", ")))
    return jobs


def _paths(entries) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def dvc_jobs(repo) -> dict[str, tuple[set[str], set[str]]]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {s["cmd"]: (set(s.get("deps", [])), _paths(s.get("outs", []) + s.get("metrics", []) + s.get("plots", [])))
            for s in stages.values()}


def test_dvc_yaml_is_current():
    """dvc.yaml is generated from params.yaml; regenerate with `cocoracle dvc-yaml` after a change."""
    expected = render_dvc_yaml(load_params(REPO / "params.yaml"), read_yaml(REPO / "config.yaml"), REPO)
    assert (REPO / "dvc.yaml").read_text() == expected


@pytest.mark.slow  # a script or an engine in a subprocess: the full suite's
@pytest.mark.parametrize("params", ["params.yaml", "tests/smoke-params.yaml", "params/gpt2-large.yaml"])
def test_engines_declare_the_same_steps(tmp_path, params):
    repo = repo_copy(tmp_path, REPO / params)
    smk, dvc = snakemake_jobs(repo), dvc_jobs(repo)
    assert set(smk) == set(dvc), "commands differ between workflow/rules and dvc.yaml"
    for cmd, (inputs, outputs) in dvc.items():
        assert smk[cmd] == (inputs, outputs), cmd
    used = load_params(repo / "params.yaml")
    stages, seeds = used["coconut"]["num_stages"] + 1, len(used["run"]["seeds"])
    assert sum(c.startswith("cocoracle train ") for c in dvc) == stages * seeds
    assert sum(c.startswith("cocoracle probe ") for c in dvc) == (stages - 1) * seeds
    assert sum(c.startswith("cocoracle seed-report ") for c in dvc) == 1


@pytest.mark.slow  # a script or an engine in a subprocess: the full suite's
def test_engines_launch_training_under_torchrun_alike(tmp_path):
    """train_processes > 1 (config.yaml) prefixes every training command with the same torchrun launch."""
    repo = repo_copy(tmp_path)
    config = repo / "config.yaml"
    config.write_text(config.read_text().replace("train_processes: 1", "train_processes: 2"))
    run(["cocoracle", "dvc-yaml"], cwd=repo)
    smk, dvc = snakemake_jobs(repo), dvc_jobs(repo)
    assert set(smk) == set(dvc)
    launched = [c for c in dvc if " cocoracle train " in c]
    assert len(launched) == 3 * 2  # the smoke params: 3 stages, 2 seeds
    assert all(c.startswith("torchrun --standalone --nproc-per-node 2 --no-python -- ")
               for c in launched)
    assert not any(c.startswith("torchrun") for c in dvc if " cocoracle train " not in c)


def _outputs(repo) -> dict[str, bytes]:
    """Every output file's bytes; not Snakemake's own markers (`.snakemake_timestamp`: a directory output's time,
    which `snakemake --touch` writes and .dvcignore leaves out)."""
    return {str(p.relative_to(repo)): p.read_bytes() for d in ("data", "models", "results")
            for p in (repo / d).rglob("*") if p.is_file() and p.name not in (".gitignore", ".snakemake_timestamp")}


@pytest.mark.e2e
def test_after_dvc_repro_pull_no_fetch_leaves_snakemake_nothing_to_do(dvc_copy):
    """DVC -> Snakemake: after `dvc repro`, `cocoracle pull --no-fetch` records the outputs for Snakemake without
    recomputing; `snakemake -n` then plans nothing and `dvc status` stays clean."""
    repo = dvc_copy
    before = _outputs(repo)
    run(["cocoracle", "pull", "--no-fetch"], cwd=repo)
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1"], cwd=repo).stdout
    assert json.loads(run(["dvc", "status", "--json"], cwd=repo).stdout or "{}") == {}
    assert _outputs(repo) == before


@pytest.mark.e2e
def test_after_snakemake_commit_leaves_dvc_nothing_to_do(snakemake_copy):
    """Snakemake -> DVC: after `snakemake`, `dvc status` lists every stage (no dvc.lock); `cocoracle commit` records
    the outputs for DVC without recomputing; `dvc status` is then clean and `snakemake -n` still plans nothing."""
    repo = snakemake_copy
    before = _outputs(repo)
    assert json.loads(run(["dvc", "status", "--json"], cwd=repo).stdout or "{}") != {}
    run(["cocoracle", "commit"], cwd=repo)
    assert json.loads(run(["dvc", "status", "--json"], cwd=repo).stdout or "{}") == {}
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1"], cwd=repo).stdout
    assert _outputs(repo) == before


@pytest.mark.slow  # a script or an engine in a subprocess: the full suite's
def test_commit_refuses_while_snakemake_plans_jobs(tmp_path):
    """`cocoracle commit` in a workspace Snakemake has not finished: one line, DVC left as is."""
    repo = repo_copy(tmp_path)
    proc = run(["cocoracle", "commit"], cwd=repo, check=False)
    assert proc.returncode == 1 and "`snakemake -n` plans jobs" in proc.stderr
    assert not (repo / "dvc.lock").exists()


@pytest.mark.slow  # a script or an engine in a subprocess: the full suite's
def test_snakemake_unlock_needs_no_cores(tmp_path):
    """`snakemake --unlock`, as Snakemake prints it after a killed run, works without --cores."""
    repo = repo_copy(tmp_path)
    (repo / ".snakemake/locks").mkdir(parents=True)
    (repo / ".snakemake/locks/0.input.lock").write_text("")
    proc = run(["snakemake", "--unlock"], cwd=repo)
    assert "Unlocked working directory" in proc.stdout + proc.stderr
    assert not list((repo / ".snakemake/locks").glob("*"))
