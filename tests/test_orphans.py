"""kill -9 of the engine's head while a job runs leaves the job running (an orphan); the rerun's job of the same output
waits for it (cocoracle/writer_lock.py) instead of writing beside it, and the output ends with an uninterrupted
run's bytes. Under Snakemake (local jobs) and under the localhost SLURM cluster (the head dies, its SLURM job runs
on). The orphan is stopped (SIGSTOP) while the rerun starts, so that it is certainly alive then on any machine, and
let go once the rerun's job is seen waiting for it."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cocoracle.engine_lock import _is_locked
from cocoracle.writer_lock import lock_path
from helpers_workflow import engine_env, output_difference, run

pytestmark = pytest.mark.e2e
TARGET = "models/seed-0/stage-0"
LIVE = "results/seed-0/train/stage-0"
WAITING = "is writing it; waiting for it to end"
# SLURM: the rerun's job must run beside the orphan's to meet its lock, as it would on a cluster with a second GPU
# free; the localhost node has one fake GPU, so the jobs ask for none (COCORACLE_GPU_MODEL unset)
SLURM = ["--workflow-profile", "workflow/profiles/slurm", "--slurm-status-command", "squeue",
         "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs",
         "--set-resources", "train_stage:mem_mb=1000", "train_stage:gpu=0"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by whoever adopted the orphan) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _until(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start(cmd: list[str], repo: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=repo, env=engine_env(), stdout=out, stderr=subprocess.STDOUT, text=True)


def _orphan_then_rerun(repo: Path, cmd: list[str], job_logs) -> tuple[int, str]:
    """Start cmd; once its job holds the target's writer lock, stop the job, kill -9 cmd, `snakemake --unlock`
    and rerun cmd; once the rerun's job says it waits, let the orphan go on. The orphan's pid and the job logs'
    text (job_logs(): the files the rerun's job writes its stderr to)."""
    lock = repo / lock_path(TARGET)
    head = _start(cmd, repo, repo.parent / "head.log")
    _until(lambda: _is_locked(lock) or head.poll() is not None, "the job to take the writer lock")
    assert head.poll() is None, (repo.parent / "head.log").read_text()[-3000:]
    orphan = int(json.loads(lock.read_text())["pid"])
    os.kill(orphan, signal.SIGSTOP)
    try:
        head.send_signal(signal.SIGKILL)
        head.wait()
        assert _alive(orphan)
        run(["snakemake", "--unlock"], cwd=repo)  # as printed by Snakemake: no --cores
        rerun = _start(cmd, repo, repo.parent / "rerun.log")
        _until(lambda: WAITING in job_logs() or rerun.poll() is not None, "the rerun's job to wait")
        assert rerun.poll() is None, (repo.parent / "rerun.log").read_text()[-3000:]
        assert _alive(orphan) and _is_locked(lock)
    finally:
        os.kill(orphan, signal.SIGCONT)
    assert rerun.wait(timeout=600) == 0, (repo.parent / "rerun.log").read_text()[-3000:]
    _until(lambda: not _alive(orphan), "the orphan to end")
    return orphan, job_logs()


def _check(repo: Path, original: Path, orphan: int, logs: str) -> None:
    waits = [line for line in logs.splitlines() if WAITING in line]
    assert len(waits) == 1 and f"{TARGET}: pid {orphan} on host " in waits[0], waits  # one writer at a time
    assert re.search(rf"{TARGET}: waited [\d.]+ s for pid {orphan} ", (repo / "logs/seed-0/train/stage-0.log")
                     .read_text())
    files = sorted(p.relative_to(original) for d in (TARGET, LIVE) for p in (original / d).rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(repo) for d in (TARGET, LIVE) for p in (repo / d).rglob("*")
                                     if p.is_file())
    for rel in files:
        difference = output_difference(repo / rel, original / rel)  # the same bytes, or run-to-run noise
        assert not difference, f"{rel}: {difference}"
    assert not list(repo.rglob(".*.writer.lock")) and not (repo / f"{TARGET}.resume").exists()
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1", TARGET], cwd=repo).stdout


def test_snakemake_orphan_is_not_joined_by_a_second_writer(snakemake_copy, snakemake_run):
    repo = snakemake_copy
    shutil.rmtree(repo / TARGET)  # the same command reruns the job
    orphan, logs = _orphan_then_rerun(repo, ["snakemake", "--cores", "2", TARGET],
                                      lambda: (repo.parent / "rerun.log").read_text())
    _check(repo, snakemake_run.repo, orphan, logs)


def test_slurm_orphan_is_not_joined_by_a_second_writer(cluster, snakemake_copy, snakemake_run):
    repo = snakemake_copy
    shutil.rmtree(repo / TARGET)

    def job_logs() -> str:
        return "".join(p.read_text() for p in (repo / ".snakemake/slurm_logs").rglob("*.log"))

    cmd = ["env", "-u", "COCORACLE_GPU_MODEL", "snakemake", TARGET, "--cores", "2", *SLURM]  # (--set-resources: last)
    orphan, logs = _orphan_then_rerun(repo, cmd, job_logs)
    _check(repo, snakemake_run.repo, orphan, logs)


@pytest.fixture(scope="module")
def cluster():
    """The localhost SLURM cluster, started as tests/test_slurm.py starts it (skipped where it cannot be)."""
    from test_slurm import START, _no_slurm

    proc = subprocess.run([str(START)], check=False, capture_output=True, text=True, timeout=900)
    if proc.returncode == 2:
        _no_slurm(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
