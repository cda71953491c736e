"""End to end with the real engines on the session's DVC smoke run (a copy): DVC experiments, offline plots, and a
DVC remote that a fresh clone pulls from until both `dvc status` and `snakemake -n` have nothing to do."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from helpers_workflow import copy_run, flat_keys, run, set_param

pytestmark = pytest.mark.e2e
EXPERIMENTS = {"c-small": [0.01], "c-large": [10.0]}  # probes.C_grid: reruns only the probes and the report
ACROSS_SEEDS = "results/report/seeds-headline.json"  # the metrics DVC shows: each figure across the seeds



def _metric_files(repo) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return [next(iter(m)) if isinstance(m, dict) else m for s in stages.values() for m in s.get("metrics", [])]


def _metrics(repo) -> dict[str, dict[str, object]]:
    return {path: flat_keys(json.loads((repo / path).read_text())) for path in _metric_files(repo)}


def _planned_jobs(dry_run: str) -> set[str]:
    """Rule names in the job-stats table of a snakemake dry run."""
    return set(re.findall(r"^(\w+)\s+\d+$", dry_run, re.MULTILINE)) - {"total"}


def _git(repo, *args: str) -> None:
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo)


@pytest.fixture(scope="module")
def experiments(dvc_run, tmp_path_factory):
    """The session's DVC smoke run, copied and committed, then two `dvc exp run -S` experiments; their outputs and
    metrics."""
    repo = copy_run(dvc_run.repo, tmp_path_factory.mktemp("exp") / "repo")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "smoke run")
    runs, metrics = {}, {"baseline": _metrics(repo)}
    for name, grid in EXPERIMENTS.items():
        runs[name] = run(["dvc", "exp", "run", "-n", name, "-S", f"probes.C_grid={grid}"], cwd=repo).stdout
        metrics[name] = _metrics(repo)
    return repo, runs, metrics


def test_plots_show_json_has_the_training_curves_offline(experiments):
    repo = experiments[0]
    plots = json.loads(run(["dvc", "plots", "show", "--json"], cwd=repo).stdout)["data"]
    for live in ("results/seed-0/train/stage-0", "results/seed-0/train/stage-2",
                 "results/seed-0/oracle-train/self/stage-1"):
        tsv = f"{live}/plots/metrics/train/loss.tsv"
        header, *lines = (repo / tsv).read_text().splitlines()
        assert header == "step\tloss" and len(lines) > 1
        (plot,) = plots[tsv]
        values = plot["content"]["data"]["values"]  # the data are inline: nothing to fetch to render it
        assert plot["type"] == "vega" and plot["content"]["encoding"]["x"]["field"] == "step"
        assert [f"{v['step']}\t{v['loss']}" for v in values] == lines
    assert plots["results/seed-0/report/training.png"][0]["type"] == "image"


def test_each_experiment_reruns_only_the_probes_and_the_report(experiments):
    _, runs, _ = experiments
    for out in runs.values():
        expected = {f"{name}_seed_{seed}" for seed in (0, 1) for name in ("probe_stage_1", "probe_stage_2", "report")}
        assert set(re.findall(r"Running stage '(\w+)'", out)) == expected | {"seed_report"}, out


def test_exp_show_lists_both_experiments_with_their_params_and_metrics(experiments):
    repo, _, metrics = experiments
    baselines = json.loads(run(["dvc", "exp", "show", "--json"], cwd=repo).stdout)
    found = {}
    for baseline in baselines:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                found[rev["name"]] = (data["params"]["params.yaml"]["data"]["probes"]["C_grid"],
                                      data["metrics"][ACROSS_SEEDS]["data"])
    assert set(found) == set(EXPERIMENTS)
    for name, grid in EXPERIMENTS.items():
        assert found[name][0] == grid
        assert flat_keys(found[name][1]) == metrics[name][ACROSS_SEEDS]


def test_metrics_diff_names_exactly_the_changed_metrics(experiments):
    repo, _, metrics = experiments
    old, new = metrics["c-small"], metrics["c-large"]
    expected = {path: _changed_leaves(old[path], new[path]) for path in new}
    expected = {path: keys for path, keys in expected.items() if keys}
    assert list(expected) == [ACROSS_SEEDS]  # the only metrics file: the across-seed figures
    assert expected[ACROSS_SEEDS] and all(key.startswith("probes.") for key in expected[ACROSS_SEEDS])
    diff = json.loads(run(["dvc", "metrics", "diff", "c-small", "c-large", "--json"], cwd=repo).stdout)
    assert {path: set(keys) for path, keys in diff.items()} == expected
    some_path, keys = next(iter(diff.items()))
    for key, change in keys.items():
        assert (change["old"], change["new"]) == (old[some_path].get(key), new[some_path].get(key))


def _changed_leaves(old: dict[str, object], new: dict[str, object]) -> set[str]:
    """The keys `dvc metrics diff` names: leaves that differ, lists left out, and a null that is a dict on the
    other side not a leaf (its leaves are, with null on that side)."""
    keys = set(old) | set(new)
    inner = {k for k in keys if any(other.startswith(k + ".") for other in keys)}
    return {k for k in keys - inner if old.get(k) != new.get(k)
            and not isinstance(old.get(k), list) and not isinstance(new.get(k), list)}


def test_params_diff_names_only_the_changed_param(experiments):
    repo = experiments[0]
    diff = json.loads(run(["dvc", "params", "diff", "c-small", "c-large", "--json"], cwd=repo).stdout)
    (change,) = diff["params.yaml"].items()
    assert change[0] == "probes.C_grid" and len(diff) == 1
    assert (yaml.safe_load(change[1]["old"]), yaml.safe_load(change[1]["new"])) == tuple(EXPERIMENTS.values())


def test_a_fresh_clone_pulls_from_the_remote_and_both_engines_are_up_to_date(experiments, tmp_path):
    repo = experiments[0]
    # the last experiment is in the workspace: commit it with a local-directory remote, and push
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], cwd=repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "keep c-large; remote")
    run(["dvc", "push"], cwd=repo)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)

    run(["dvc", "pull"], cwd=clone)
    assert json.loads(run(["dvc", "status", "--json"], cwd=clone).stdout) == {}
    # checkout order and no .snakemake/ metadata: a bare pull leaves Snakemake planning reruns
    assert "Nothing to be done" not in run(["snakemake", "-n", "--cores", "1"], cwd=clone).stdout

    run(["cocoracle", "pull"], cwd=clone)
    assert json.loads(run(["dvc", "status", "--json"], cwd=clone).stdout) == {}
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1"], cwd=clone).stdout
    for path in ("results/report.md", "results/seed-0/probes/stage-2.json", "models/seed-0/stage-2/model.safetensors"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path

    # the recorded metadata keeps param changes rerunning exactly what they affect
    set_param(clone, "evaluate", "extra_tokens", 5)
    assert _planned_jobs(run(["snakemake", "-n", "--cores", "1"], cwd=clone).stdout) == {
        "evaluate_stage", "report", "seed_report", "all"}
    assert set(json.loads(run(["dvc", "status", "--json"], cwd=clone).stdout)) == {
        f"evaluate_stage_{stage}_seed_{seed}" for stage in (0, 1, 2) for seed in (0, 1)}
