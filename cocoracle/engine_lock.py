"""One engine at a time in a workspace: Snakemake and DVC each lock only their own runs, so a `dvc repro`
started during a `snakemake` run (or the reverse) would overwrite the other's outputs.

A Snakemake run holds `.cocoracle/run.lock` (an flock, released by the OS when the run ends, however it ends)
and writes who holds it there; its own jobs inherit a token in the environment. A pipeline command started by
anything else while it is held refuses in one line, before touching a file (DVC's stages keep their outputs in
place while they run: `persist`, see cocoracle/dvc_yaml.py). A Snakemake run started while `dvc repro` holds
DVC's repository lock or runs a stage refuses the same way.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import IO

from cocoracle.config import InputError

LOCK_FILE = Path(".cocoracle/run.lock")
DVC_LOCK = Path(".dvc/tmp/lock")  # held by DVC commands, but released while a stage's command runs
DVC_RWLOCK = Path(".dvc/tmp/rwlock")  # DVC's record of the stages running: their outputs, pid and command
TOKEN_ENV = "COCORACLE_RUN_TOKEN"
_held: list[IO[str]] = []  # the open lock file of this process's run (kept open until the process exits)


def _is_locked(path: Path) -> bool:
    """Whether another process holds an flock on path."""
    if not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _dvc_run(root: Path) -> str | None:
    """The DVC command running in the workspace at root, if any."""
    try:
        records = json.loads((root / DVC_RWLOCK).read_text())
    except (OSError, ValueError):
        records = {}
    for info in [*records.get("write", {}).values(), *(i for v in records.get("read", {}).values() for i in v)]:
        if isinstance(info, dict) and _alive(info.get("pid")):
            return f"`{info.get('cmd', 'dvc')}` (pid {info['pid']})"
    return "a DVC command" if _is_locked(root / DVC_LOCK) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, str]) -> str:
    return f"{holder.get('engine', 'a run')} (pid {holder.get('pid', '?')}, started {holder.get('started', '?')})"


def hold_for_snakemake(root: str | Path = ".") -> None:
    """Called when a Snakemake run starts (not for dry runs): refuse if DVC or another run holds the workspace,
    else hold it until this process exits and hand the token to the run's jobs."""
    root = Path(root)
    if _belongs_to_holder(root):  # a job of the run (e.g. a SLURM job's own snakemake)
        return
    dvc = _dvc_run(root)
    if dvc:
        raise InputError(f"{root.resolve()}: {dvc} is running in this workspace; wait for it to finish before "
                         "starting snakemake")
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115  held open for the life of the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InputError(f"{root.resolve()}: {_describe(_holder(root))} is running in this workspace; wait for it "
                         "to finish") from None
    token = uuid.uuid4().hex
    holder = {"engine": "snakemake", "pid": str(os.getpid()), "token": token,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder))
    handle.flush()
    _held.append(handle)
    os.environ[TOKEN_ENV] = token


def check_free(root: str | Path = ".") -> None:
    """Called by every pipeline command before it works: refuse if a run it does not belong to holds the
    workspace."""
    root = Path(root)
    if not _is_locked(root / LOCK_FILE) or _belongs_to_holder(root):
        return
    raise InputError(f"{root.resolve()}: {_describe(_holder(root))} is running in this workspace and would be "
                     "overwritten; wait for it to finish")


def _belongs_to_holder(root: Path) -> bool:
    """Whether this process carries the token of the run that holds the workspace."""
    token = _holder(root).get("token")
    return bool(token) and token == os.environ.get(TOKEN_ENV)
