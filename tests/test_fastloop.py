"""`python -m pytest` runs the fast loop (no e2e, slow or network tests); `--full`, `-m` or a named file run more."""
from __future__ import annotations

import pytest

TESTS = """
import pytest

def test_unit():
    pass

@pytest.mark.e2e
def test_engines():
    pass

@pytest.mark.slow
def test_compile():
    pass

@pytest.mark.network
def test_locks():
    pass
"""
INI = """
[pytest]
markers =
    e2e: end to end
    slow: slow
    network: network
"""


@pytest.fixture
def suite(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=TESTS)
    pytester.makepyfile(test_other="import pytest\n\n@pytest.mark.e2e\ndef test_other_engines():\n    pass\n")
    return pytester


def _ran(suite, *args: str) -> set[str]:
    result = suite.inline_run("-p", "fastloop", *args)
    return {report.nodeid.split("::")[-1] for report in result.getreports("pytest_runtest_logreport")
            if report.when == "call" and report.passed}


def test_the_default_is_the_fast_loop(suite):
    assert _ran(suite) == {"test_unit"}


def test_full_runs_every_test(suite):
    assert _ran(suite, "--full") == {"test_unit", "test_engines", "test_compile", "test_locks",
                                             "test_other_engines"}


def test_a_marker_expression_chooses_instead(suite):
    assert _ran(suite, "-m", "e2e") == {"test_engines", "test_other_engines"}


def test_a_named_file_or_test_runs_whatever_its_markers(suite):
    assert _ran(suite, "test_suite.py") == {"test_unit", "test_engines", "test_compile", "test_locks"}
    assert _ran(suite, "test_other.py::test_other_engines") == {"test_other_engines"}
    assert _ran(suite, ".") == {"test_unit"}  # a directory is not a choice of tests
