import os
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from cocoracle.config import InputError, load_params
from cocoracle.dvc_yaml import render_dvc_yaml
from cocoracle.engine_lock import hold_for_snakemake
from cocoracle.steps import STEPS, Layout, jobs, param_values


configfile: "config.yaml"


validate(config, "../schemas/config.schema.yaml")
try:
    PARAMS = load_params(config["params_file"])
except InputError as exc:
    sys.exit(f"cocoracle: error: {exc}")

LAYOUT = Layout.from_config(config, PARAMS, Path(workflow.basedir).parent)
DVC_YAML = LAYOUT.root / "dvc.yaml"  # DVC's copy of this DAG, brought up to date by `cocoracle dvc-yaml`
if DVC_YAML.is_file() and DVC_YAML.read_text() != render_dvc_yaml(PARAMS, config, LAYOUT.root):
    logger.warning(
        f"cocoracle: {DVC_YAML} is out of date with the steps, the code's imports or the params; "
        "run `cocoracle dvc-yaml` before `dvc repro`"
    )
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    # envs/cocoracle.yaml holds the dependencies, not the project: jobs run this checkout's code
    shell.prefix(f'export PATH="{LAYOUT.root}/workflow/bin:$PATH"; ')
BENCH = config["benchmarks_dir"]
# every job computes on run.threads threads (cocoracle/numerics.py): its own bits do not depend on --cores, and
# the engine runs jobs side by side instead; under SLURM, the CPUs each job asks for
THREADS = PARAMS["run"]["threads"]
GPU_MODEL = os.environ.get("COCORACLE_GPU_MODEL", "")  # SLURM GPU type for the GPU rules; empty: any


wildcard_constraints:
    seed=r"\d+",
    stage=r"\d+",
    split=r"train|val|dev|test|ood",
    kind=r"separate|self",
    base=r"model|oracle",


# Each rule's input, output, params and shell come from its step in cocoracle/steps.py; the rule adds
# only what is Snakemake's own (log, benchmark, threads, resources, conda, report captions).


def step_input(name):
    """The step's inputs for a job, with the package files its command imports as `code`."""
    step = STEPS[name]
    return lambda wildcards: {**step.resolve(LAYOUT, step.typed(wildcards))[0].inputs, "code": step.code(LAYOUT)}


def step_output(name, **reports):
    """The step's output patterns; directories flagged, those named in reports annotated for the HTML report."""
    outputs = {}
    for key, path in STEPS[name].output_paths(LAYOUT).items():
        path = directory(path) if STEPS[name].outputs[key].directory else path
        outputs[key] = report(path, **reports[key]) if key in reports else path
    return outputs


def step_params(name):
    """The job's command line, and the params values it reads (a change reruns it)."""
    step = STEPS[name]
    return {
        "command": lambda wildcards: step.resolve(LAYOUT, step.typed(wildcards))[1],
        "values": lambda wildcards: param_values(PARAMS, step.resolve(LAYOUT, step.typed(wildcards))[0].params),
    }


def step_log(name):
    return LAYOUT.fill(STEPS[name].log)


def every_output():
    """Every output of every job these params make: the same DAG dvc.yaml holds."""
    return [path for step, wildcards in jobs(LAYOUT) for path in step.output_paths(LAYOUT, wildcards).values()]


onstart:
    # one engine at a time in this workspace (cocoracle/engine_lock.py); dry runs never get here
    try:
        hold_for_snakemake(LAYOUT.root)
    except InputError as exc:
        sys.exit(f"cocoracle: error: {exc}")
