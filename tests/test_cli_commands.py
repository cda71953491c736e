"""cli.STEP_COMMANDS (the commands that check the workspace lock) are exactly the step table's commands."""
from __future__ import annotations

from cocoracle.cli import STEP_COMMANDS
from cocoracle.steps import STEPS


def test_every_step_command_checks_the_workspace_lock():
    assert STEP_COMMANDS == {step.command for step in STEPS.values()}
