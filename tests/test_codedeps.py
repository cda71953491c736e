"""Code dependencies are read from the imports: each step's closure, on a toy package and on this one."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cocoracle import codedeps
from cocoracle.cli import build_parser
from cocoracle.steps import STEPS

TOY = {
    "__init__.py": "",
    "cli.py": """
        import argparse
        from cocoracle import base

        def cmd_alpha(args):
            from cocoracle.alpha import run
            run()

        def cmd_beta(args):
            import cocoracle.sub.beta
        """,
    "base.py": "import json\n",
    "alpha.py": """
        from cocoracle.helper import thing

        def run():
            from cocoracle import lazy  # a function-level import runs when the function does
        """,
    "helper.py": "from .base import *\n",
    "lazy.py": "",
    "unused.py": "import cocoracle.alpha\n",
    "sub/__init__.py": "",
    "sub/beta.py": "from ..helper import thing\n",
}


@pytest.fixture
def toy(tmp_path):
    for name, text in TOY.items():
        path = tmp_path / "cocoracle" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_closure_follows_every_import_of_the_command_and_only_its_handler(toy):
    assert codedeps.code_files("alpha", toy) == [f"cocoracle/{m}.py" for m in
                                            ("__init__", "alpha", "base", "cli", "helper", "lazy")]
    assert codedeps.code_files("beta", toy) == ["cocoracle/__init__.py", "cocoracle/base.py", "cocoracle/cli.py",
                                           "cocoracle/helper.py", "cocoracle/sub/__init__.py",
                                           "cocoracle/sub/beta.py"]


def test_a_command_without_its_handler_is_an_error(toy):
    with pytest.raises(KeyError, match="cmd_gamma"):
        codedeps.code_files("gamma", toy)


def test_every_step_command_is_dispatched_to_the_handler_the_closure_reads():
    """The closure reads cli.py's `cmd_<command>`; the parser must call exactly that function."""
    choices = build_parser()._subparsers._group_actions[0].choices
    for step in STEPS.values():
        assert choices[step.command].get_default("func").__name__ == codedeps.handler_name(step.command)


@pytest.mark.parametrize("command", sorted({step.command for step in STEPS.values()}))
def test_what_a_command_really_imports_is_in_its_closure(command):
    """Importing cli.py and running the handler's imports loads no package module outside the closure."""
    handler = codedeps.handler_name(command)
    script = textwrap.dedent(f"""
        import ast, inspect, sys, textwrap
        import cocoracle.cli as cli
        tree = ast.parse(textwrap.dedent(inspect.getsource(cli.{handler})))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), "<handler>", "exec"))
        print("\\n".join(sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "cocoracle")))
        """)
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    files = {str(Path(f).resolve().relative_to(codedeps.ROOT)) for f in loaded}
    closure = set(codedeps.code_files(command))
    assert files <= closure, f"loaded but not declared: {files - closure}"
    assert "cocoracle/cli.py" in closure and "cocoracle/steps.py" not in closure
