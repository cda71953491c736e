"""The smoke DAG through workflow/profiles/slurm on a real one-node SLURM cluster on localhost (with a fake GPU):
every rule runs as a SLURM job with the resources it declares, and the results equal a local run's byte for byte."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers_workflow import BIN, REPO, SMOKE_PARAMS, copy_run, differing_outputs, output_difference, repo_copy, run

pytestmark = pytest.mark.e2e
START = REPO / "scripts" / "start-localhost-slurm.sh"
GPU_RULES = {"train_stage", "evaluate_stage", "intervene_stage", "collect_activations", "train_oracle",
             "evaluate_oracles"}
ENV = {"SBATCH_PARTITION": "alt", "SBATCH_ACCOUNT": "cocoracle-ci", "COCORACLE_GPU_MODEL": "fake"}
MEM_MB = 1000  # set for every rule with --set-resources: the localhost node may have less memory than rules ask
BAR_S = 900  # the SLURM smoke run (two seeds) must finish within 15 minutes
REQUIRE = "COCORACLE_REQUIRE_SLURM"  # set (not 0): fail instead of skipping where SLURM cannot be installed
THREADS = 2  # --cores for both runs (each job computes on run.threads whatever this is)
RUN_THREADS = yaml.safe_load(SMOKE_PARAMS.read_text())["run"]["threads"]  # the CPUs each computing job asks for


def _no_slurm(message: str) -> None:
    """Where SLURM cannot be installed: skip, or fail where COCORACLE_REQUIRE_SLURM=1 (CI: .ci/run sets it)."""
    message = f"no SLURM on this machine and it cannot be installed: {message}"
    if os.environ.get(REQUIRE, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE} is set, so this test must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster():
    """Start (installing if needed) the localhost cluster; skip only where SLURM cannot be installed, and even then
    fail where COCORACLE_REQUIRE_SLURM is set."""
    proc = subprocess.run([str(START)], check=False, capture_output=True, text=True, timeout=900)
    if proc.returncode == 2:
        _no_slurm(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _job_stats(out: str) -> dict[str, int]:
    """Rule -> job count from the first job-stats table of a snakemake run."""
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE) if rule != "total"}


@pytest.fixture(scope="module")
def local(snakemake_run):
    """The session's local smoke run (conftest.py: `snakemake --cores 2`, THREADS) and its job counts."""
    return snakemake_run.repo, _job_stats(snakemake_run.log)


@pytest.fixture(scope="module")
def slurm(cluster, local, tmp_path_factory):
    """Run the smoke DAG through the profile; return the repo, the log, the wall time and the run's SLURM jobs."""
    repo = repo_copy(tmp_path_factory.mktemp("slurm"))
    rules = sorted(set(local[1]) - {"all"})
    cmd = ["env", *(f"{k}={v}" for k, v in ENV.items()), "timeout", "-k", "30", str(BAR_S),
           "snakemake", "--workflow-profile", "workflow/profiles/slurm", "--cores", str(THREADS),
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs", "--set-resources", *(f"{r}:mem_mb={MEM_MB}" for r in rules)]
    start = time.monotonic()
    proc = run(cmd, cwd=repo, timeout=BAR_S + 60)
    elapsed = time.monotonic() - start
    print(f"\nSLURM smoke DAG: {elapsed:.0f} s wall")
    log = proc.stdout + proc.stderr
    blocks = {}  # snakemake jobid -> (rule, threads, resources)
    for block in re.split(r"\n(?=rule \w+:\n)", log)[1:]:
        rule = re.match(r"rule (\w+):", block).group(1)
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.MULTILINE).group(1)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        resources = dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {}
        blocks[jobid] = (rule, int(threads.group(1)) if threads else 1, resources)
    submitted = re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.$", log, re.MULTILINE)
    jobs = [(*blocks[jobid], slurm_id, logfile) for jobid, slurm_id, logfile in submitted]
    return repo, log, elapsed, jobs


def _scontrol(slurm_id: str) -> dict[str, str]:
    """The controller's record of a job (kept MinJobAge after it ends)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\S+?)=(\S*)", out.stdout))


def test_every_rule_but_all_ran_as_a_slurm_job(slurm, local):
    repo, log, elapsed, jobs = slurm
    ran = {}
    for rule, *_ in jobs:
        ran[rule] = ran.get(rule, 0) + 1
    assert ran == {rule: n for rule, n in local[1].items() if rule != "all"}, ran
    assert len({slurm_id for *_, slurm_id, _ in jobs}) == len(jobs)
    run_id = re.search(r"^SLURM run ID: (\S+)$", log, re.MULTILINE).group(1)
    for rule, _, _, slurm_id, logfile in jobs:
        info = _scontrol(slurm_id)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), (rule, info)
        assert info["JobName"] == run_id and info["Comment"].startswith(f"rule_{rule}"), (rule, info)
        assert info["WorkDir"] == str(repo)
        assert f"rule {rule}:" in Path(logfile).read_text(), logfile  # the job's own snakemake ran this rule
    assert elapsed < BAR_S


def test_slurm_jobs_get_the_resources_the_rules_and_profile_ask_for(slurm):
    _, _, _, jobs = slurm
    gpu_rules = set()
    for rule, threads, resources, slurm_id, _ in jobs:
        info = _scontrol(slurm_id)
        assert info["Partition"] == ENV["SBATCH_PARTITION"], (rule, info)  # not the default partition
        assert resources["slurm_account"] == info["Account"] == ENV["SBATCH_ACCOUNT"], (rule, info)
        single = rule in ("generate", "report", "seed_report")
        assert int(info["CPUs/Task"]) == threads and threads == (1 if single else RUN_THREADS), (rule, info)
        assert resources["mem_mb"] == str(MEM_MB) and info["MinMemoryNode"] == f"{MEM_MB}M", (rule, info)
        minutes = int(resources["runtime"])
        assert info["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00", (rule, info)
        if resources.get("gpu") == "1":
            gpu_rules.add(rule)
            assert info["TresPerJob"] == f"gres:gpu:{ENV['COCORACLE_GPU_MODEL']}:1", (rule, info)
        else:
            assert "gpu" not in info.get("TresPerJob", ""), (rule, info)
    assert gpu_rules == GPU_RULES


def test_slurm_results_equal_a_local_run(slurm, local):
    slurm_repo, local_repo = slurm[0], local[0]
    assert {"results/report.md", "results/seed-0/probes/stage-2.csv", "results/seed-0/oracle/stage-2.csv"} <= \
        {str(p.relative_to(local_repo)) for p in (local_repo / "results").rglob("*")}
    alone, differ = differing_outputs(slurm_repo, local_repo)
    assert not alone, alone
    assert not differ, differ


HOLD_AT = 10  # stage 1's training under SLURM holds after this optimizer step (mid-epoch) until SLURM stops it
STAGE_1_STEPS = 2 * 7  # train.epochs [1, 2, 1]: 2 epochs of 7 batches (200 problems, batch 32)
IDLE = 2  # attempts in a row allowed to end without progress (a job that never got as far as training)
# (Progress is counted from the state each attempt started from: under load a state was seen lost, its job step
# ended `Terminated` 15 s after resuming, and the next attempt started over; docs/slurm.md.)
# `cocoracle` for the SLURM run of the time-limit test (first on PATH, which the jobs inherit: sbatch --export=ALL):
# stage 1's training, after step HOLD_AT, waits for a stop signal before going on, so that the job outlasts its
# time limit however fast the machine is. On a machine so slow that the signal comes before training has begun, it
# is kept (Python would die of it before the training loop's handler is in place) and honoured at the first step,
# so that every attempt that got as far as this script saves some progress. Only the timing changes; what is
# computed does not.
HOLDING_CLI = """#!{python}
import signal, sys, time
early = []
signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
import cocoracle.resume as resume
from cocoracle.cli import main

due = resume.Saver.due

def hold(self, step):
    if early and self.stop_signal is None:
        self.stop_signal = early[0]
    if step == {hold_at} and self.path.name == "stage-1.resume":
        waited = time.monotonic()
        while self.stop_signal is None and time.monotonic() - waited < 600:
            time.sleep(0.1)
    return due(self, step)

resume.Saver.due = hold
sys.exit(main())
"""
# stage 1's job: a 1-minute limit, and SLURM's warning 30 s before it (the profile's --signal=TERM@120 asks for more
# than the whole limit): SIGTERM to the job's step, the training, which saves and stops. (At the limit itself SLURM
# signals the job's Snakemake too, which then removes the step's outputs while the training may be copying its
# dvclive folder into the resume state: that is why the profile asks for the warning.)
TIME_LIMITED = ["train_stage:runtime=1", "train_stage:slurm_extra='--signal=TERM@30'", "train_stage:mem_mb=1000"]


def _saved_step(repo: Path) -> int | None:
    state = repo / "models/seed-0/stage-1.resume/state.json"
    return yaml.safe_load(state.read_text())["step"] if state.is_file() else None


def test_a_stage_longer_than_its_time_limit_finishes_by_rerunning(cluster, tmp_path):
    """Stage 1's job outlasts its 1-minute limit (HOLDING_CLI holds it): SLURM's signal ahead of the limit stops
    it, it saves its resume state and stops; reruns continue it, each from further on, and end with the bytes of a
    local run never stopped.

    Nothing here depends on the machine's speed: the first attempt is certainly cut (it waits for the signal), and
    the reruns go on for as long as each one finishes or moves the saved state forward."""
    local = repo_copy(tmp_path / "local")
    params = yaml.safe_load((local / "params.yaml").read_text())
    params["train"]["epochs"] = [1, 2, 1]
    params["resume"] = {"every_steps": None, "every_minutes": None}  # only the signal saves
    (local / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["snakemake", "--cores", str(THREADS), "models/seed-0/stage-0"], cwd=local)
    repo = copy_run(local, tmp_path / "slurm")  # stage 0 done: under SLURM only stage 1's job runs
    run(["snakemake", "--cores", str(THREADS), "models/seed-0/stage-1"], cwd=local)  # the uncut stage 1
    holding = tmp_path / "bin"
    holding.mkdir()
    (holding / "cocoracle").write_text(HOLDING_CLI.format(python=BIN / "python", hold_at=HOLD_AT))
    (holding / "cocoracle").chmod(0o755)
    cmd = ["env", *(f"{k}={v}" for k, v in ENV.items()), f"PATH={holding}{os.pathsep}{BIN}{os.pathsep}"
           f"{os.environ['PATH']}", "snakemake", "models/seed-0/stage-1", "--workflow-profile",
           "workflow/profiles/slurm",
           "--cores", str(THREADS), "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks",
           "2", "--slurm-keep-successful-logs", "--set-resources", *TIME_LIMITED]
    attempts = []  # (exit status, SLURM job id, the job's final state, the saved step after it, the job's log)
    idle = 0  # attempts in a row that neither finished nor moved the saved state forward (at most IDLE)
    while not attempts or attempts[-1][0] != 0:
        proc = run(cmd, cwd=repo, check=False, timeout=900)
        out = proc.stdout + proc.stderr
        ((slurm_id, job_log),) = re.findall(r"^Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.$",
                                            out, re.MULTILINE)
        saved = _saved_step(repo)
        attempts.append((proc.returncode, slurm_id, _scontrol(slurm_id)["JobState"], saved, Path(job_log)))
        if proc.returncode != 0:
            assert "SLURM-job" in out, out[-3000:]  # it is the job that failed
            before = attempts[-2][3] if len(attempts) > 1 else None  # the state this attempt started from
            idle = idle + 1 if saved is None or (before is not None and saved <= before) else 0
            assert idle <= IDLE, f"{idle} attempts in a row neither finished nor saved a later step: {attempts}"
    # the first attempt was cut; each attempt that saved did so on SLURM's signal (on a loaded machine the signal,
    # which SLURM may send early, can also come before the training has started: then nothing is saved)
    assert attempts[0][0] != 0 and all(state != "COMPLETED" for _, _, state, _, _ in attempts[:-1]), attempts
    assert attempts[-1][2] == "COMPLETED", attempts
    previous = None
    for *_, saved, job_log in attempts[:-1]:
        if saved is not None and saved != previous:  # (None: the state was lost, which the loop above allows)
            assert f"SIGTERM: stopped after step {saved}; the resume state is in" in job_log.read_text(), job_log
        previous = saved
    # every rerun that got as far as training resumed from the step saved before it; the last one did
    for (*_, before, _), (*_, job_log) in zip(attempts, attempts[1:], strict=False):
        found = [int(step) for step in re.findall(r"resuming from \S+ after step (\d+)", job_log.read_text())]
        assert found in ([before], []) if before else found == [], (found, attempts)
    assert f"resuming from models/seed-0/stage-1.resume after step {attempts[-2][3]}\n" in attempts[-1][4].read_text()
    assert HOLD_AT in [saved for *_, saved, _ in attempts[:-1]], attempts
    steps = [int(line.split("\t")[0]) for line in
             (repo / "results/seed-0/train/stage-1/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(STAGE_1_STEPS))  # no gap, no duplicate
    for rel in ("models/seed-0/stage-1/model.safetensors", "models/seed-0/stage-1/params.json"):
        difference = output_difference(repo / rel, local / rel)  # the same bytes, or run-to-run noise
        assert not difference, f"{rel}: {difference}"
    assert not (repo / "models/seed-0/stage-1.resume").exists()
