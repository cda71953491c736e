"""One live writer per output, whatever started it.

An engine's own locks die with the engine: after `kill -9` of a `snakemake` head its running jobs live on
(orphans), and once `snakemake --unlock` is run a rerun would start a second writer of the same output and of
its resume state (`<out>.resume/`); on a cluster the head dies on a login node while its SLURM jobs run on. So
every step process takes, before it touches an output, its resume state or its log, an flock on
`.<name>.writer.lock` beside each output it writes (the paths its output options name: `writes` in
cocoracle/cli.py), and records there its pid, host, command and start time. The lock is the step's own: the OS
releases it when the process ends, however it ends, and no engine's death releases it early.

A step that finds an output's lock held waits for the holder to end, saying so in one line naming it (pid, host,
command, start) and the output; then it runs as it would have (resuming from the state the holder left, or
rewriting what the holder finished: the bytes of an uninterrupted run). `COCORACLE_WRITER_WAIT` bounds the wait
in seconds; `0` refuses at once, in one line, exit status 2. The lock file is removed when its holder ends
normally; a killed holder leaves it behind, unlocked, and the next writer takes it over. Neither engine tracks it
(it is no declared output, and lies beside the outputs, not inside one), and .gitignore leaves it out.

Data-parallel training runs one `cocoracle train` per process under torchrun: the first (RANK 0) takes the locks
and records torchrun's run id; the others wait until the locks are held by their own launch.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from cocoracle.config import InputError

SUFFIX = ".writer.lock"
WAIT_ENV = "COCORACLE_WRITER_WAIT"  # seconds to wait for another writer; unset: as long as it takes; 0: refuse
POLL_S = 0.5
_held: list[tuple[Path, IO[str]]] = []  # this process's locks, kept open until it exits
_made: list[Path] = []  # the directories made to hold a lock file, removed with it if the step left them empty


def lock_path(output: str | Path) -> Path:
    """The lock file of an output: hidden, beside it."""
    out = Path(output)
    return out.parent / f".{out.name}{SUFFIX}"


def _group() -> str | None:
    """torchrun's id of this launch (shared by its processes), if launched by torchrun with several processes."""
    return os.environ.get("TORCHELASTIC_RUN_ID") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _holder(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(holder: dict[str, str]) -> str:
    """pid N on host H (`command`, started T)."""
    command = holder.get("command", "?")
    command = command if len(command) <= 160 else command[:157] + "..."
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (`{command}`, "
            f"started {holder.get('started', '?')})")


def _wait_limit() -> float | None:
    value = os.environ.get(WAIT_ENV, "").strip()
    if not value:
        return None
    try:
        limit = float(value)
    except ValueError:
        raise InputError(f"{WAIT_ENV}: must be a number of seconds (0: refuse at once), got {value!r}") from None
    if limit < 0:
        raise InputError(f"{WAIT_ENV}: must be a number of seconds >= 0, got {value!r}")
    return limit


def _try_lock(path: Path) -> IO[str] | None:
    """The lock file at path, opened and flocked by this process; None if another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115  held open for the life of the step
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    try:  # a holder that ended removed the file it held: lock the one now at path
        same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        handle.close()
        return _try_lock(path)
    return handle


def _held_by_own_launch(path: Path, group: str) -> bool:
    """Whether the lock at path is held (by another process) for this torchrun launch."""
    if _holder(path).get("group") != group:
        return False
    probe = _try_lock(path)
    if probe is None:
        return True
    fcntl.flock(probe, fcntl.LOCK_UN)  # not held after all: the file left by an ended holder
    probe.close()
    return False


def hold_writers(outputs: Iterable[str | Path], command: str, say=None) -> list[str]:
    """Hold the writer lock of every output (in path order) until this process exits, waiting for (or, with
    COCORACLE_WRITER_WAIT, refusing) another live writer; the lines saying whom this process waited for."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    limit, group = _wait_limit(), _group()
    follower = group is not None and int(os.environ.get("RANK", "0")) != 0
    record = {"pid": str(os.getpid()), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), **({"group": group} if group else {})}
    waited = []
    for output in sorted({str(o) for o in outputs}):
        path = lock_path(output)
        missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        _made.extend(missing)  # deepest first
        start, announced = time.monotonic(), None
        while True:
            if follower:
                if _held_by_own_launch(path, group):
                    break
                handle = None
            else:
                handle = _try_lock(path)
                if handle is not None:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(json.dumps({**record, "output": output}))
                    handle.flush()
                    _held.append((path, handle))
                    break
            holder = _holder(path)
            if handle is None and not follower and announced is None:
                if limit == 0:
                    raise InputError(f"{output}: {describe(holder)} is writing it; wait for it to end (or unset "
                                     f"{WAIT_ENV} to wait)")
                announced = describe(holder)
                say(f"{output}: {announced} is writing it; waiting for it to end")
            if limit is not None and time.monotonic() - start > limit:
                raise InputError(f"{output}: {describe(holder)} is still writing it after {limit:g} s "
                                 f"({WAIT_ENV}); try again once it has ended")
            time.sleep(POLL_S)
        if announced:
            waited.append(f"{output}: waited {time.monotonic() - start:.1f} s for {announced} to end")
    return waited


@atexit.register
def release() -> None:
    """Remove and release this process's lock files (still held while removed: a waiter re-checks the path), and
    the directories made for them that the step left empty (a step refused before its work leaves nothing)."""
    while _held:
        path, handle = _held.pop()
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                path.unlink()
        except OSError:
            pass
        handle.close()
    while _made:
        try:
            _made.pop(0).rmdir()
        except OSError:  # not empty (the step wrote there), or gone
            pass
