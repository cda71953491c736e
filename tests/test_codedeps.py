"""Code dependencies are read from the imports: each step's closure, on a toy package and on this one."""
from __future__ import annotations

import json
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


COMMANDS = sorted({step.command for step in STEPS.values()})
# One Python process imports cli.py, then the heavy third-party libraries the handlers use (none of which imports a
# cocoracle module, so the package modules loaded below are unchanged), then forks once per command: each child runs
# its handler's imports and lists the package modules it has loaded, what a fresh `cocoracle <command>` process
# would. One interpreter start and one torch import instead of one per command.
LOADED_BY_EACH = textwrap.dedent("""
    import ast, inspect, json, os, sys, textwrap
    import cocoracle.cli as cli
    for heavy in ("torch", "numpy", "pandas", "pyarrow", "transformers", "peft", "safetensors", "sklearn",
                  "matplotlib", "dvclive", "tqdm"):
        try:
            __import__(heavy)
        except ImportError:
            pass
    for command, handler in json.loads(sys.argv[1]).items():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cli, handler))))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    exec(compile(ast.Module([node], []), "<handler>", "exec"))
            files = sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "cocoracle")
            os.write(write, json.dumps(files).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            loaded = pipe.read()
        assert os.waitpid(pid, 0)[1] == 0, command
        print(json.dumps({command: json.loads(loaded)}))
    """)


@pytest.fixture(scope="module")
def loaded_by_each() -> dict[str, list[str]]:
    """{command: the package files loaded by importing cli.py and running its handler's imports}."""
    handlers = json.dumps({command: codedeps.handler_name(command) for command in COMMANDS})
    out = subprocess.run([sys.executable, "-c", LOADED_BY_EACH, handlers], capture_output=True, text=True,
                         check=True).stdout
    return {command: files for line in out.splitlines() for command, files in json.loads(line).items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_what_a_command_really_imports_is_in_its_closure(command, loaded_by_each):
    """Importing cli.py and running the handler's imports loads no package module outside the closure."""
    files = {str(Path(f).resolve().relative_to(codedeps.ROOT)) for f in loaded_by_each[command]}
    assert {"cocoracle/cli.py", "cocoracle/config.py"} <= files  # what cli.py itself imports: the child did report
    closure = set(codedeps.code_files(command))
    assert files <= closure, f"loaded but not declared: {files - closure}"
    assert "cocoracle/cli.py" in closure and "cocoracle/steps.py" not in closure
