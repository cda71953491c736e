"""The step commands: exactly the step table's, and each logs its wall time and peak memory."""
from __future__ import annotations

import re

from cocoracle.cli import STEP_COMMANDS, main
from cocoracle.steps import STEPS
from helpers_workflow import SMOKE_PARAMS


def test_every_step_command_checks_the_workspace_lock():
    assert STEP_COMMANDS == {step.command for step in STEPS.values()}


def test_a_step_logs_its_wall_time_and_peak_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "logs" / "generate.log"
    assert main(["generate", "--params", str(SMOKE_PARAMS), "--out", "data", "--log", str(log)]) == 0
    last = log.read_text().splitlines()[-1]
    found = re.search(r"generate done in ([\d.]+) s, peak RSS of this process (\d+) MB$", last)
    assert found, last
    assert 10 < int(found.group(2)) < 100_000  # an interpreter with pandas loaded: tens of MB at least
