"""scripts/bench_noop.py's incremental planning: what a changed parameter makes each engine plan, read from
their output, and the run's params.yaml put back whatever happens."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_noop.py"
DRY_RUN = """Building DAG of jobs...
Job stats:
job            count
-----------  -------
probe_stage        2
report             1
all                1
total              4

rule probe_stage:
    wildcards: stage=1

Job stats:
job            count
-----------  -------
probe_stage        2
report             1
all                1
total              4

Reasons:
"""


def _script():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling figures
    spec = importlib.util.spec_from_file_location("bench_noop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planned_reads_each_engines_work():
    planned = _script().planned
    assert planned("snakemake -n", DRY_RUN) == ["probe_stage x2", "report", "all"]
    assert planned("snakemake -n", "Building DAG of jobs...\nNothing to be done (all requested files exist).") == []
    status = {"probe_stage_1": [{"changed deps": {"params.yaml": {"modified": ["probes.max_iter"]}}}]}
    assert planned("dvc status", json.dumps(status)) == ["probe_stage_1"]
    assert planned("dvc status", "{}") == []


def test_changed_params_sets_one_key_and_puts_the_file_back(tmp_path):
    changed_params = _script().changed_params
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
    changed_params = _script().changed_params
    text = "probes:\n  max_iter: 300\n"
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SystemExit, match="stopped by signal"), changed_params(tmp_path, "probes.max_iter=301"):
        assert "301" in (tmp_path / "params.yaml").read_text()
        os.kill(os.getpid(), signal.SIGTERM)
    assert (tmp_path / "params.yaml").read_text() == text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_bad_input_is_one_line_naming_it(tmp_path):
    script = _script()
    (tmp_path / "params.yaml").write_text("probes:\n  max_iter: 300\n")
    with pytest.raises(SystemExit, match=r"--change probes.max_iter: expected KEY=VALUE"), \
            script.changed_params(tmp_path, "probes.max_iter"):
        pass
    with pytest.raises(SystemExit, match=r"`dvc status --json` failed in .* \(\d+\): .*DVC repository"):
        script.time_runs(["dvc", "status", "--json"], tmp_path, dict(os.environ), 1)  # not a DVC repository
