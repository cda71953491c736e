"""The fast loop by default: `python -m pytest` leaves out the tests marked `e2e` (the real engines on the smoke
DAG), `slow` and `network` (the locks resolved against PyPI); `--full` runs every test, as CI does (`.ci/run`).

The default stands aside wherever the tests are chosen another way: with `--full`, with an explicit `-m` expression,
and for the tests of a file or test named on the command line (`python -m pytest tests/test_slurm.py` runs it).
conftest.py imports these hooks; tests/test_fastloop.py checks them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

LEFT_OUT = ("e2e", "slow", "network")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", default=False,
                     help="run every test, the end-to-end (e2e) and slow ones too, as CI does; without it (and "
                          "without -m or a named test file) they are left out: the fast loop")


def _named_files(config: pytest.Config) -> set[Path]:
    """The test files named on the command line, alone or with a test (`file::test`); not directories."""
    files = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve()
        if path.is_file():
            files.add(path)
    return files


def _fast_loop(config: pytest.Config) -> bool:
    return not config.getoption("--full") and not config.getoption("markexpr")


def pytest_report_header(config: pytest.Config) -> str | None:
    if _fast_loop(config):
        return f"the fast loop: tests marked {' or '.join(LEFT_OUT)} are left out (--full runs them, as CI does)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _fast_loop(config):
        return
    named = _named_files(config)
    kept, left_out = [], []
    for item in items:
        marked = any(item.get_closest_marker(name) for name in LEFT_OUT)
        (left_out if marked and Path(item.path).resolve() not in named else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
