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

from helpers_workflow import REPO, differing_outputs, repo_copy, run

pytestmark = pytest.mark.e2e
START = REPO / "scripts" / "start-localhost-slurm.sh"
GPU_RULES = {"train_stage", "evaluate_stage", "collect_activations", "train_oracle", "evaluate_oracles"}
ENV = {"SBATCH_PARTITION": "alt", "SBATCH_ACCOUNT": "cocoracle-ci", "COCORACLE_GPU_MODEL": "fake"}
MEM_MB = 1000  # set for every rule with --set-resources: the localhost node may have less memory than rules ask
BAR_S = 600  # the SLURM smoke run must finish within 10 minutes
REQUIRE = "COCORACLE_REQUIRE_SLURM"  # set (not 0): fail instead of skipping where SLURM cannot be installed
THREADS = 2  # --cores for both runs: float results depend on the threads (OMP_NUM_THREADS) of each job


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
def local(tmp_path_factory):
    repo = repo_copy(tmp_path_factory.mktemp("local"))
    proc = run(["snakemake", "--cores", str(THREADS)], cwd=repo)
    return repo, _job_stats(proc.stdout + proc.stderr)


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
        assert int(info["CPUs/Task"]) == threads and threads == (1 if rule in ("generate", "report") else THREADS)
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
    assert {"results/report.md", "results/probes/stage-2.csv", "results/oracle/stage-2.csv"} <= \
        {str(p.relative_to(local_repo)) for p in (local_repo / "results").rglob("*")}
    alone, differ = differing_outputs(slurm_repo, local_repo)
    assert not alone, alone
    assert not differ, differ


TIME_LIMITED = ["--set-resources", "train_stage:runtime=2", "train_stage:slurm_extra='--signal=TERM@20'"]


def test_a_stage_longer_than_its_time_limit_finishes_by_rerunning(cluster, tmp_path):
    """Stage 1 needs more than its 2-minute limit: SLURM signals it, it saves and stops; reruns continue it and
    end with a local run's bytes."""
    repos = {}
    for name in ("local", "slurm"):
        repos[name] = repo_copy(tmp_path / name)
        params = yaml.safe_load((repos[name] / "params.yaml").read_text())
        params["train"]["epochs"] = [1, 800, 1]  # stage 1: 5600 optimizer steps, about 2.5 minutes here
        params["resume"] = {"every_steps": None, "every_minutes": None}  # only the signal saves
        (repos[name] / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["snakemake", "--cores", str(THREADS), "models/stage-1"], cwd=repos["local"], timeout=1500)
    cmd = ["env", *(f"{k}={v}" for k, v in ENV.items()), "snakemake", "models/stage-1", "--workflow-profile",
           "workflow/profiles/slurm", "--cores", str(THREADS), "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "2", *TIME_LIMITED, "train_stage:mem_mb=1000",
           "generate:mem_mb=1000"]
    outcomes, resumed = [], []
    for _ in range(6):
        proc = run(cmd, cwd=repos["slurm"], check=False, timeout=400)
        outcomes.append(proc.returncode)
        assert proc.returncode == 0 or "SLURM-job" in proc.stdout + proc.stderr, proc.stderr[-3000:]  # a job failed
        log = repos["slurm"] / "logs/train/stage-1.log"
        resumed += re.findall(r"resuming from \S+ after step (\d+)", log.read_text()) if log.is_file() else []
        if proc.returncode == 0:
            break
    assert outcomes[0] != 0 and outcomes[-1] == 0, outcomes  # the limit stopped it, a rerun finished it
    assert resumed and all(int(step) > 0 for step in resumed), resumed
    for rel in ("models/stage-1/model.safetensors", "models/stage-0/model.safetensors"):
        assert (repos["slurm"] / rel).read_bytes() == (repos["local"] / rel).read_bytes(), rel
