"""The Snakemake and DVC DAGs must not drift: same commands, same inputs, same outputs."""
from __future__ import annotations

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
