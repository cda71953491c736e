"""End to end with the real engines: two `dvc exp run --queue` experiments run by two queue workers at once, each
in its own temporary copy, while the workspace (held by a Snakemake run all along) is left exactly as it was."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from hashlib import sha256
from pathlib import Path

import psutil  # a dependency of dvc
import pytest
import yaml

from cocoracle.engine_lock import LOCK_FILE, _dvc_run, _is_locked
from helpers_workflow import copy_run, engine_env, run, set_param

pytestmark = pytest.mark.e2e
EXPERIMENTS = {"c-small": [0.01], "c-large": [10.0]}  # probes.C_grid: reruns only the probe stage
TARGET = "probe_stage_1_seed_0"  # the smoke DAG cut down to one probe stage: the experiments take minutes
METRICS = "results/seed-0/probes/stage-1-headline.json"  # what DVC shows of the probes (their results: RESULTS)
RESULTS = "results/seed-0/probes/stage-1.json"
QUEUE_TIMEOUT = 480
# what the Snakefile's onstart does, in a process that keeps the workspace until its stdin closes
HOLD = ("import sys; from cocoracle.engine_lock import hold_for_snakemake; hold_for_snakemake(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.read()")


def _git(repo: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo).stdout


def _keep_only(repo: Path, target: str) -> None:
    """Cut the copy's dvc.yaml down to target and the stages it depends on (as `dvc dag` finds them): a whole
    pipeline of its own, which `dvc status` and `dvc exp apply` see complete. The whole DAG's metrics are the
    across-seed report's, which needs every stage: the cut pipeline shows the target's headline (METRICS) instead."""
    keep = set(re.findall(r'^"(\w+)";$', run(["dvc", "dag", "--dot", target], cwd=repo).stdout, re.MULTILINE))
    assert target in keep
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["stages"] = {name: stage for name, stage in pipeline["stages"].items() if name in keep}
    stage = pipeline["stages"][target]
    headline = next(out for out in stage["outs"] if METRICS in out)
    stage["outs"].remove(headline)
    stage["metrics"] = [headline]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def _snapshot(repo: Path) -> dict[str, object]:
    """sha256 of every workspace file (tracked, outputs, logs; not .git/ nor DVC's cache and .dvc/tmp/, where
    the queue keeps its state and copies), `git status --porcelain` and HEAD."""
    files = {}
    for top, dirs, names in os.walk(repo):
        rel_top = Path(top).relative_to(repo).as_posix()
        dirs[:] = [d for d in dirs if f"{rel_top}/{d}".removeprefix("./") not in (".git", ".dvc/cache", ".dvc/tmp")]
        for name in names:
            path = Path(top) / name
            files[path.relative_to(repo).as_posix()] = sha256(path.read_bytes()).hexdigest()
    return {"files": files, "status": _git(repo, "status", "--porcelain", "--untracked-files=all"),
            "head": _git(repo, "rev-parse", "HEAD").strip()}


def _stage_commands(repo: Path) -> dict[str, Path]:
    """{experiment: its temporary copy} for each experiment whose stage command (`cocoracle ...`) is running now.

    DVC's executor record `.dvc/tmp/exps/run/<task>/<task>.run` names each task's experiment and copy; a stage
    command belongs to the copy that is its working directory."""
    copies = {}
    for record in (repo / ".dvc/tmp/exps/run").glob("*/*.run"):
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # being written
        copies[os.path.realpath(info["root_dir"])] = info["name"]
    live = {}
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = proc.info["cmdline"] or [], proc.info["cwd"]
        if cwd in copies and any(Path(arg).name == "cocoracle" for arg in cmd[:2]):
            live[copies[cwd]] = Path(cwd)
    return live


def _queue_status(text: str) -> tuple[dict[str, str], str]:
    """({experiment: status}, workers) from `dvc queue status`: a table of Task, Name, Created, Status, then
    `Worker status: N active, M idle`."""
    tasks = {fields[1]: fields[-1] for fields in map(str.split, text.splitlines())
             if len(fields) >= 4 and fields[1] in EXPERIMENTS}
    workers = re.search(r"Worker status: (.*)", text)
    return tasks, workers.group(1).strip() if workers else ""


def _run_queue(repo: Path) -> dict[str, object]:
    """`dvc queue start -j 2`, then watch until both tasks have finished and both workers have exited.

    Side by side is judged from the processes themselves: every 0.2 s, the stage commands alive in each task's
    copy (`_stage_commands`); an experiment's interval runs from the first to the last sighting of its command.
    At each sighting of both at once, it also records what a Snakemake start in the workspace would see of DVC
    (`_dvc_run`) and whether the workspace lock is still held. `dvc queue status` is polled every 10 s."""
    with open(repo.parent / "queue-start.log", "w") as out:  # the workers inherit it: see engine_env
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=engine_env(), stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    start = time.monotonic()
    seen: dict[str, list[float]] = {}
    copies: dict[str, Path] = {}
    together: list[bool] = []  # per sighting of both at once: whether the workspace lock was held
    workspace_dvc: list[str | None] = []  # and what _dvc_run saw, unless a `dvc queue status` of ours was running
    status_check, next_check, status = None, 0.0, ""
    while True:
        now = time.monotonic() - start
        live = _stage_commands(repo)
        for name, copy in live.items():
            seen.setdefault(name, [now, now])[1] = now
            copies[name] = copy
        if len(live) == 2:
            together.append(_is_locked(repo / LOCK_FILE))
            if status_check is None:
                workspace_dvc.append(_dvc_run(repo))
        if status_check is None and now >= next_check:
            status_check = subprocess.Popen(["dvc", "queue", "status"], cwd=repo, env=engine_env(), text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        elif status_check is not None and status_check.poll() is not None:
            status, status_check, next_check = status_check.stdout.read(), None, now + 10
            tasks, workers = _queue_status(status)
            if tasks.keys() == EXPERIMENTS.keys() and set(tasks.values()) <= {"Success", "Failed"} \
                    and workers == "0 active, 0 idle":
                break
        assert now < QUEUE_TIMEOUT, f"the queue did not finish in {QUEUE_TIMEOUT} s:\n{status}"
        time.sleep(0.2)
    return {"seen": seen, "copies": copies, "together": together, "workspace_dvc": workspace_dvc, "status": status,
            "wall_s": time.monotonic() - start}


@pytest.fixture(scope="module")
def queued(dvc_run, tmp_path_factory):
    """A committed smoke run (the session's DVC run, copied, cut to TARGET's pipeline), two queued experiments run by
    two workers while a Snakemake run holds the workspace; the workspace before and after, the watch's findings and
    `dvc exp show --json`."""
    repo = copy_run(dvc_run.repo, tmp_path_factory.mktemp("queue") / "repo")
    set_param(repo, "activations", "layers", [0.5])  # one hidden state (the oracle's): fewer probes to fit
    _keep_only(repo, TARGET)
    run(["dvc", "repro"], cwd=repo)  # stage 1's caches and probes again, for the one hidden state
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "smoke run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(repo)], env=engine_env(), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        before = _snapshot(repo)
        for name, grid in EXPERIMENTS.items():
            run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"probes.C_grid={grid}"], cwd=repo)
        watched = _run_queue(repo)
        assert holder.poll() is None, "the workspace lock was let go during the queue run"
    except BaseException:
        run(["dvc", "queue", "stop", "--kill"], cwd=repo, check=False)
        raise
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], cwd=repo).stdout)
    return {"repo": repo, "before": before, "after": _snapshot(repo), "shown": shown, **watched}


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """{name: {'state', 'baseline', 'rev', 'params', 'metrics'}} of the experiments in `dvc exp show --json`."""
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = {"state": (exp.get("executor") or {}).get("state"), "baseline": baseline["rev"],
                                      "rev": rev["rev"],
                                      "params": rev["data"]["params"]["params.yaml"]["data"],
                                      "metrics": rev["data"]["metrics"][METRICS]["data"]}
    return found


def test_both_experiments_succeed_with_their_own_params_and_metrics(queued):
    tasks, _ = _queue_status(queued["status"])
    assert tasks == dict.fromkeys(EXPERIMENTS, "Success"), queued["status"]
    found = _experiments(queued["shown"])
    assert found.keys() == EXPERIMENTS.keys()
    for name, grid in EXPERIMENTS.items():
        assert found[name]["state"] == "success"
        assert found[name]["baseline"] == queued["before"]["head"]
        assert found[name]["params"]["probes"]["C_grid"] == grid
        assert found[name]["metrics"]["probes"]["stage-1"]
    assert found["c-small"]["metrics"] != found["c-large"]["metrics"]  # each has its own


def test_they_ran_side_by_side_in_their_own_copies(queued):
    seen, copies = queued["seen"], queued["copies"]
    assert seen.keys() == EXPERIMENTS.keys(), seen
    (start_a, end_a), (start_b, end_b) = seen.values()
    assert max(start_a, start_b) < min(end_a, end_b), seen  # the intervals overlap ...
    assert queued["together"], seen  # ... and both stage commands were seen alive at one moment
    exps = Path(os.path.realpath(queued["repo"])) / ".dvc/tmp/exps"
    assert len(set(copies.values())) == 2 and all(copy.parent == exps for copy in copies.values()), copies


def test_the_workspace_is_untouched(queued):
    before, after, repo = queued["before"], queued["after"], queued["repo"]
    assert METRICS in before["files"] and "dvc.lock" in before["files"]
    assert before["status"] == ""  # the committed run: nothing to see for git
    assert after == before
    assert not _is_locked(repo / LOCK_FILE)
    assert json.loads(run(["dvc", "status", "--json"], cwd=repo).stdout) == {}


def test_our_lock_neither_blocks_them_nor_is_fooled_by_them(queued):
    # they ran (and succeeded, above) while a Snakemake run held the workspace: check_free runs in their copies;
    # and while both ran, a Snakemake start in the workspace saw no DVC run there to refuse on
    assert queued["together"] and all(queued["together"])
    assert queued["workspace_dvc"] and set(queued["workspace_dvc"]) == {None}


def test_exp_apply_gives_a_workspace_dvc_finds_up_to_date(queued):
    repo = queued["repo"]
    run(["dvc", "exp", "apply", "c-large"], cwd=repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["probes"]["C_grid"] == EXPERIMENTS["c-large"]
    shown = _experiments(queued["shown"])["c-large"]["metrics"]
    assert json.loads((repo / METRICS).read_text()) == shown
    assert json.loads(run(["dvc", "status", "--json"], cwd=repo).stdout) == {}
