import os
import sys

from snakemake.utils import validate

from cocoracle.config import InputError, load_params, oracle_stages
from cocoracle.data import SPLITS
from cocoracle.pipeline import (CODE, ORACLE_KINDS, ORACLE_SHARED_KEYS, REPORT_PLOTS, oracle_train_keys, param_values,
                                separate_base, train_launcher)

configfile: "config.yaml"


validate(config, "../schemas/config.schema.yaml")
try:
    PARAMS = load_params(config["params_file"])
except InputError as exc:
    sys.exit(f"cocoracle: error: {exc}")

PF = config["params_file"]
DATA, MODELS, RESULTS = config["data_dir"], config["models_dir"], config["results_dir"]
LOGS, BENCH = config["logs_dir"], config["benchmarks_dir"]
STAGES = list(range(PARAMS["coconut"]["num_stages"] + 1))
LATENT_STAGES = STAGES[1:]  # stages with latent thoughts to collect and probe
ORACLE_STAGES = oracle_stages(PARAMS)
SEPARATE_BASE = separate_base(PARAMS, MODELS)
TRAIN_LAUNCHER = train_launcher(config["train_processes"])
GPU_MODEL = os.environ.get("COCORACLE_GPU_MODEL", "")  # SLURM GPU type for the GPU rules; empty: any

wildcard_constraints:
    stage=r"\d+",
    split=r"train|val|test|ood",
    kind=r"separate|self",
