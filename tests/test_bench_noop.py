"""scripts/bench_noop.py's incremental planning: what a changed parameter makes each engine plan, read from
their output, and the run's params.yaml put back whatever happens."""
from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from conftest import load_script

JOB_STATS = """Job stats:
job            count
-----------  -------
probe_stage        2
report             1
all                1
total              4
"""
DRY_RUN = f"Building DAG of jobs...\n{JOB_STATS}\nrule probe_stage:\n    wildcards: stage=1\n\n{JOB_STATS}\nReasons:\n"


def test_planned_reads_each_engines_work():
    planned = load_script("bench_noop").planned
    assert planned("snakemake -n", DRY_RUN) == ["probe_stage x2", "report", "all"]
    assert planned("snakemake -n", "Building DAG of jobs...\nNothing to be done (all requested files exist).") == []
    status = {"probe_stage_1_seed_0": [{"changed deps": {"params.yaml": {"modified": ["probes.max_iter"]}}}]}
    assert planned("dvc status", json.dumps(status)) == ["probe_stage_1_seed_0"]
    assert planned("dvc status", "{}") == []


def test_changed_params_sets_one_key_and_puts_the_file_back(tmp_path):
    changed_params = load_script("bench_noop").changed_params
    text = "# a comment the engines never see\nprobes:\n  max_iter: 300\n  C_grid: [0.1, 1.0]\n"
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(RuntimeError), changed_params(tmp_path, "probes.max_iter=301"):
        assert yaml.safe_load((tmp_path / "params.yaml").read_text())["probes"] == {"max_iter": 301,
                                                                                  "C_grid": [0.1, 1.0]}
        raise RuntimeError("a planning command failed")
    assert (tmp_path / "params.yaml").read_text() == text
    with pytest.raises(SystemExit, match="probes.max_iters is not a parameter"), \
            changed_params(tmp_path, "probes.max_iters=301"):
        pass
    assert (tmp_path / "params.yaml").read_text() == text


def test_a_stopped_benchmark_puts_the_params_back(tmp_path):
    changed_params = load_script("bench_noop").changed_params
    text = "probes:\n  max_iter: 300\n"
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SystemExit, match="stopped by signal"), changed_params(tmp_path, "probes.max_iter=301"):
        assert "301" in (tmp_path / "params.yaml").read_text()
        os.kill(os.getpid(), signal.SIGTERM)
    assert (tmp_path / "params.yaml").read_text() == text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_bad_input_is_one_line_naming_it(tmp_path):
    script = load_script("bench_noop")
    (tmp_path / "params.yaml").write_text("probes:\n  max_iter: 300\n")
    with pytest.raises(SystemExit, match=r"--change probes.max_iter: expected KEY=VALUE"), \
            script.changed_params(tmp_path, "probes.max_iter"):
        pass
    with pytest.raises(SystemExit, match=r"`dvc status --json` failed in .* \(\d+\): .*DVC repository"):
        script.time_runs(["dvc", "status", "--json"], tmp_path, dict(os.environ), 1)  # not a DVC repository
