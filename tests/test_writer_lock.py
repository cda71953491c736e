"""One live writer per output (cocoracle/writer_lock.py): a step whose output another live process is writing
waits for it (one line naming it) or, with COCORACLE_WRITER_WAIT=0, refuses; the lock is the process's own."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cocoracle.cli import STEP_COMMANDS, build_parser, written
from cocoracle.config import InputError, load_params, read_yaml
from cocoracle.headline import SUFFIX as HEADLINE
from cocoracle.steps import Layout, jobs
from cocoracle.writer_lock import WAIT_ENV, hold_writers, lock_path
from conftest import cocoracle_command
from helpers_workflow import REPO, SMOKE_PARAMS

HOLD = """
import sys, time
from cocoracle.writer_lock import hold_writers
hold_writers([sys.argv[1]], "cocoracle generate --out " + sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(out: Path, seconds: float, **env: str) -> subprocess.Popen:
    """Another process holding out's writer lock for `seconds` (once it has printed `held`)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _generate(out: Path, log: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cocoracle_command(), "generate", "--params", str(SMOKE_PARAMS), "--out", str(out),
                           "--log", str(log)], capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k != WAIT_ENV}, **env})


def test_a_second_writer_refuses_in_one_line_naming_the_first(tmp_path):
    out = tmp_path / "data"
    first = _holder(out, 60)
    try:
        second = _generate(out, tmp_path / "generate.log", **{WAIT_ENV: "0"})
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"cocoracle generate: error: {out}: pid {first.pid} on host {socket.gethostname()} "
                           f"(`cocoracle generate --out {out}`, started "), line
    assert not out.exists() and not (tmp_path / "generate.log").exists()  # nothing written, not even the log


def test_a_second_writer_waits_for_the_first_to_end_then_writes(tmp_path):
    out, log = tmp_path / "data", tmp_path / "generate.log"
    first = _holder(out, 3)
    started = time.monotonic()
    second = _generate(out, log)
    assert second.returncode == 0, second.stderr
    assert first.poll() is not None and time.monotonic() - started > 2  # it ran after the first ended
    waits = [line for line in second.stderr.splitlines() if "waiting for it to end" in line]
    assert waits == [f"cocoracle generate: {out}: pid {first.pid} on host {socket.gethostname()} "
                     f"(`cocoracle generate --out {out}`, started {waits[0].split('started ')[1]}"]
    assert f"{out}: waited " in log.read_text() and f"for pid {first.pid} " in log.read_text()
    assert (out / "train.parquet").is_file()
    assert not lock_path(out).exists()  # removed by each holder as it ended


def test_a_killed_writer_leaves_an_unlocked_file_the_next_takes_over(tmp_path):
    out, log = tmp_path / "data", tmp_path / "generate.log"
    first = _holder(out, 60)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_path(out).is_file()  # left behind, but no longer held
    second = _generate(out, log, **{WAIT_ENV: "0"})
    assert second.returncode == 0, second.stderr
    assert "waiting" not in second.stderr and not lock_path(out).exists()


def test_the_wait_is_bounded_by_the_environment(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = _holder(out, 60)
    monkeypatch.setenv(WAIT_ENV, "1")
    said = []
    try:
        with pytest.raises(InputError, match=rf"pid {first.pid} .* is still writing it after 1 s"):
            hold_writers([out], "test", said.append)
    finally:
        first.kill()
        first.wait()
    assert len(said) == 1 and said[0].startswith(f"{out}: pid {first.pid} ")
    monkeypatch.setenv(WAIT_ENV, "soon")
    with pytest.raises(InputError, match=f"{WAIT_ENV}: must be a number of seconds"):
        hold_writers([out], "test")


def test_torchrun_processes_share_their_first_process_lock(tmp_path, monkeypatch):
    """RANK 0 holds the locks for its launch; the other processes of the launch go on, another launch's wait."""
    out = tmp_path / "out"
    first = _holder(out, 60, WORLD_SIZE="2", RANK="0", TORCHELASTIC_RUN_ID="launch-a")
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
        assert hold_writers([out], "rank 1") == []
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-b")
        monkeypatch.setenv(WAIT_ENV, "1")
        with pytest.raises(InputError, match="still writing it after 1 s"):
            hold_writers([out], "rank 1 of another launch")
    finally:
        first.kill()
        first.wait()


def test_every_step_output_is_under_an_option_the_command_locks(tmp_path):
    """The step table's outputs of every smoke job are the paths (or under, or its headline file beside
    it) the command's `writes` options name: no output is written without its lock."""
    seen = set()
    layouts = [Layout.from_config(read_yaml(REPO / "config.yaml"), load_params(params), REPO)
               for params in (SMOKE_PARAMS, REPO / "params/gpt2-large.yaml")]  # the second fetches its models
    for layout, (step, wildcards) in ((each, job) for each in layouts for job in jobs(each)):
        job, _ = step.resolve(layout, wildcards)
        seen.add(step.command)
        args = build_parser().parse_args([step.command, *job.args.split()])
        locked = [Path(path) for path in written(args)]
        assert locked, step.command
        for output in step.output_paths(layout, wildcards).values():
            out = Path(output)
            assert any(out == path or path in out.parents
                       or out == path.with_name(path.stem + HEADLINE)
                       for path in locked), (step.command, output, locked)
    assert seen == STEP_COMMANDS
