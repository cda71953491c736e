"""What DVC shows of one finished smoke run: `dvc exp show` numeric metric columns with names of their own, the
across-seed figures the only metrics, dvclive's curves among the plots, `dvc plots show` and `plots diff`
without a warning."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from helpers_workflow import copy_run, engine_env, flat_keys, run

pytestmark = pytest.mark.e2e
WIDE = 250  # a wide terminal's columns
# the smoke DAG (stages 0..2, oracles at 1 and 2): 3 x 4 evaluation, 2 x 2 probe and 2 x 2 oracle figures, each
# as mean, low and high over the seeds, and the number of seeds
SMOKE_METRIC_COLUMNS = 3 * (12 + 4 + 4) + 1


@pytest.fixture(scope="module")
def committed(dvc_run, tmp_path_factory):
    """A copy of the session's smoke run by `dvc repro`, committed (`plots diff HEAD` compares with it)."""
    repo = copy_run(dvc_run.repo, tmp_path_factory.mktemp("dvc-output") / "repo")
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke run"], cwd=repo)
    return repo


def test_exp_show_has_a_few_numeric_metric_columns_each_named_by_its_key(committed):
    (workspace, *_) = json.loads(run(["dvc", "exp", "show", "--json"], cwd=committed).stdout)
    files = workspace["data"]["metrics"]
    columns = {f"{path}:{key}": value for path, file in files.items() for key, value in flat_keys(file["data"]).items()}
    assert len(columns) == SMOKE_METRIC_COLUMNS, sorted(columns)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in columns.values()), columns
    assert not [c for c in columns if "provenance" in c or "by_" in c]
    keys = [c.split(":", 1)[1] for c in columns]
    assert len(keys) == len(set(keys))  # so DVC names each column by its key alone
    header = run(["dvc", "exp", "show", "--csv"], cwd=committed).stdout.splitlines()[0].split(",")
    assert set(keys) <= set(header) and not [h for h in header if ".json:" in h]


def _shown_at(repo, width: int, *args: str) -> list[str]:
    """The lines of `dvc exp show --no-pager` in a terminal `width` columns wide."""
    env = {**engine_env(), "COLUMNS": str(width)}
    return subprocess.run(["dvc", "exp", "show", "--no-pager", *args], cwd=repo, env=env, capture_output=True,
                          text=True, check=True).stdout.splitlines()


def test_exp_show_fits_a_wide_terminal_and_one_stages_figures_read_whole(committed):
    (workspace, *_) = json.loads(run(["dvc", "exp", "show", "--json"], cwd=committed).stdout)
    keys = [key for file in workspace["data"]["metrics"].values() for key in flat_keys(file["data"])]
    lines = _shown_at(committed, WIDE)
    assert lines and max(map(len, lines)) <= WIDE, "\n".join(lines)
    # the last stage's figures, as docs/experiments.md shows them
    lines = _shown_at(committed, WIDE, "--drop", ".*", "--keep", r"Experiment|[a-z_]+\.stage-2\.")
    assert lines and max(map(len, lines)) <= WIDE, "\n".join(lines)
    head = " ".join(lines[:next(i for i, line in enumerate(lines) if "workspace" in line)])
    visible = [key for key in keys if re.search(rf"(^|\s){re.escape(key)}(\s|$)", head)]
    assert len(visible) >= 6 and all(".stage-2." in key for key in visible), "\n".join(lines)  # neither cut nor wrapped


def test_the_across_seed_figures_are_the_metrics_and_dvclive_curves_plots(committed):
    stages = yaml.safe_load((committed / "dvc.yaml").read_text())["stages"]
    for name in ("train_stage_0_seed_1", "train_self_oracle_stage_1_seed_0"):
        live = re.search(r"--live (\S+)", stages[name]["cmd"]).group(1)
        assert {f"{live}/metrics.json": {"persist": True}} in stages[name]["outs"] and "metrics" not in stages[name]
        assert stages[name]["plots"] == [{f"{live}/plots/metrics": {"x": "step", "persist": True}}]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=committed).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert list(metrics) == ["results/report/seeds-headline.json"]
    figure = metrics["results/report/seeds-headline.json"]["data"]["oracle"]["stage-2"]["self"]["step"]
    assert set(figure) == {"mean", "low", "high"} and figure["low"] <= figure["mean"] <= figure["high"]


@pytest.mark.parametrize("command", [["dvc", "plots", "show"], ["dvc", "plots", "diff", "HEAD"]])
def test_plots_render_without_a_warning(committed, command):
    proc = run(command, cwd=committed)
    said = proc.stdout + proc.stderr
    assert "WARNING" not in said and "not iterable" not in said, said
    assert (committed / "dvc_plots/index.html").is_file()
    index = (committed / "dvc_plots/index.html").read_text()
    for curve in ("results/seed-0/train/stage-0/plots/metrics/train/loss.tsv",
                  "results/seed-0/oracle-train/separate/stage-2/plots/metrics/val/exact_match.tsv"):
        assert curve in index


def test_the_headline_files_provenance_is_its_results_files(committed):
    made_at = run(["git", "rev-parse", "HEAD~1"], cwd=committed).stdout.strip()  # the commit before the run's
    for path in ("results/seed-0/eval/stage-1-headline.json", "results/seed-0/oracle/stage-2-headline.json"):
        shown = run(["cocoracle", "provenance", path], cwd=committed).stdout
        assert f"git revision: {made_at}\n" in shown
        assert shown == run(["cocoracle", "provenance", path.replace("-headline", "")], cwd=committed).stdout
    assert os.path.getsize(committed / "results/seed-0/probes/stage-1-headline.json") < 200
